"""A bundle on the device: opened and checked (open.py), installed and updated (store.py)."""
