"""Offline information kiosk: a full-screen web page served beside the API by the same server."""
