"""Multi-process start-up: one call before any other jax call, driven by the environment."""

import os

import jax


def maybe_initialize() -> None:
  """Calls `jax.distributed.initialize` when the environment asks for several processes.

  - `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`: explicit (e.g. 127.0.0.1 tests).
  - `PRETRAIN_DISTRIBUTED=1`: auto-detection (SLURM, Open MPI, Cloud TPU, GKE) with no arguments.
  Nothing set: a single process (TPU pods may also auto-initialise in jax itself).
  """
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  if address:
    jax.distributed.initialize(address, int(os.environ['JAX_NUM_PROCESSES']),
                               int(os.environ['JAX_PROCESS_ID']))
  elif os.environ.get('PRETRAIN_DISTRIBUTED') == '1':
    jax.distributed.initialize()
