"""device_profiles."""
