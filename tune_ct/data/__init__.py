"""The data stage: image files -> a manifest with a locked test split -> subset lists -> memory-mapped caches."""
