"""Pretraining: models, losses, sharding, the train step and the train loop."""
