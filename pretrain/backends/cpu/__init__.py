"""XLA:CPU mechanisms: lean-derivative ops, huge-page malloc, step-memory prefaulting, tower slices."""
