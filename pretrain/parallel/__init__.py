"""The device mesh, parameter and batch shardings, and activation sharding constraints."""
