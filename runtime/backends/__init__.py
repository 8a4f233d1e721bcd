"""The engine floor: the Backend seam (base.py) and one folder per engine; nothing above it."""
