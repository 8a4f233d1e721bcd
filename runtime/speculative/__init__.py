"""Speculative decoding: drafters, the acceptance rule, the switch, the target/draft budget."""
