"""Offline evaluation: zero-shot classification and image-text retrieval over checkpoints."""
