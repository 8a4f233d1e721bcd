"""Offline information kiosk: a bounded question/answer loop over the runtime's Python API."""
