"""The train step: state, the pure jitted step, gradient caching, frozen parameters, optimizer."""
