"""Camera event narrator: turns detector events into one-line summaries through the local API."""
