"""Side effects around the step: the loop, checkpoints, logging, run control, distributed start-up."""
