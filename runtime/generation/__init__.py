"""One generation: the request types, its preparation, the decoding loop, log-probs, latency."""
