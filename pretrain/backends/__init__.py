"""Backend-specific code (CPU mechanisms), selected once from the backend."""
