"""Expert residency: the cache and its policies, the pinned hot set, the pager, prefetch, traces."""
