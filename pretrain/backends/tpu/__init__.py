"""TPU mechanisms: Pallas splash attention."""
