"""Multi-process start-up: one call before any other jax call, driven by the environment."""

import os
import re
from collections.abc import Mapping

import jax

# `local_device_ids` that jax 0.10.2 reads as "every device of this host": a non-None value stops
# its SLURM/MPI auto-detection from narrowing the process to [SLURM_LOCALID], and an empty one sets
# no visible-device list.
ALL_LOCAL_DEVICES: list[int] = []


def tasks_on_this_node(environ: Mapping[str, str]) -> int | None:
  """Processes SLURM started on this process's node, or None when SLURM does not say."""
  per_node = environ.get('SLURM_NTASKS_PER_NODE')
  if per_node and per_node.isdigit():
    return int(per_node)
  # SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE: e.g. '8(x2),4': 8 on the first two nodes.
  spec = environ.get('SLURM_STEP_TASKS_PER_NODE') or environ.get('SLURM_TASKS_PER_NODE')
  if spec:
    counts = []
    for part in spec.split(','):
      match = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', part.strip())
      if not match:
        return None
      counts += [int(match.group(1))] * int(match.group(2) or 1)
    node = int(environ.get('SLURM_NODEID', '0'))
    return counts[node] if node < len(counts) else None
  tasks, nodes = environ.get('SLURM_NTASKS'), (environ.get('SLURM_STEP_NUM_NODES')
                                               or environ.get('SLURM_JOB_NUM_NODES'))
  if tasks and nodes and tasks.isdigit() and tasks == nodes:
    return 1
  return None


def local_device_ids(environ: Mapping[str, str] = os.environ) -> list[int] | None:
  """The `local_device_ids` to pass to jax.distributed.initialize; None lets jax choose.

  Under SLURM jax gives each process only SLURM_LOCALID's GPU, which is right for one process
  per GPU and silently wrong for one process per host (it would use one GPU of eight). With one
  task on this node, every local device belongs to it. JAX_LOCAL_DEVICE_IDS, where set, wins
  (jax reads it itself).
  """
  if 'SLURM_JOB_ID' not in environ or environ.get('JAX_LOCAL_DEVICE_IDS'):
    return None
  return ALL_LOCAL_DEVICES if tasks_on_this_node(environ) == 1 else None


def maybe_initialize() -> None:
  """Calls `jax.distributed.initialize` when the environment asks for several processes.

  - `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`: explicit (e.g. 127.0.0.1 tests).
  - `PRETRAIN_DISTRIBUTED=1`: auto-detection (SLURM, Open MPI, Cloud TPU, GKE) with no arguments,
    except that one SLURM task per node sees all of its node's GPUs (`local_device_ids`).
  Nothing set: a single process (TPU pods may also auto-initialise in jax itself).
  """
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  if address:
    jax.distributed.initialize(address, int(os.environ['JAX_NUM_PROCESSES']),
                               int(os.environ['JAX_PROCESS_ID']))
  elif os.environ.get('PRETRAIN_DISTRIBUTED') == '1':
    jax.distributed.initialize(local_device_ids=local_device_ids())

