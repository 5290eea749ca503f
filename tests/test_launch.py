"""GPU-cluster launch: which local devices each SLURM process takes (decided without a GPU)."""

import pytest
from jax._src import clusters

from pretrain.runtime.distributed import ALL_LOCAL_DEVICES, local_device_ids, tasks_on_this_node

# Two nodes of eight GPUs; this process is task 9 (node 1, local id 1) or the host's only task.
PER_HOST = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'gpu[001-002]', 'SLURM_NTASKS': '2',
            'SLURM_PROCID': '1', 'SLURM_LOCALID': '0', 'SLURM_NODEID': '1',
            'SLURM_STEP_NUM_NODES': '2', 'SLURM_TASKS_PER_NODE': '1(x2)'}
PER_GPU = {**PER_HOST, 'SLURM_NTASKS': '16', 'SLURM_PROCID': '9', 'SLURM_LOCALID': '1',
           'SLURM_TASKS_PER_NODE': '8(x2)'}


def jax_choice(monkeypatch, environ: dict, ours) -> tuple:
  """What jax 0.10.2's SLURM auto-detection makes of `ours` (the value initialize receives)."""
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  return clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, ours, None, 5)


def test_one_process_per_host_sees_all_its_gpus(monkeypatch):
  assert local_device_ids(PER_HOST) == ALL_LOCAL_DEVICES
  address, count, pid, ids = jax_choice(monkeypatch, PER_HOST, local_device_ids(PER_HOST))
  assert (address, count, pid) == ('gpu001:61586', 2, 1)
  assert ids == [] and not ids  # falsy: initialize sets no visible-device list, all 8 are used
  # What jax did by itself: only SLURM_LOCALID's GPU, one GPU of eight.
  assert jax_choice(monkeypatch, PER_HOST, None)[3] == [0]


def test_one_process_per_gpu_keeps_jax_choice(monkeypatch):
  assert local_device_ids(PER_GPU) is None
  assert jax_choice(monkeypatch, PER_GPU, local_device_ids(PER_GPU))[3] == [1]


@pytest.mark.parametrize('environ, tasks', [
    ({'SLURM_NTASKS_PER_NODE': '1'}, 1), ({'SLURM_NTASKS_PER_NODE': '8'}, 8),
    ({'SLURM_TASKS_PER_NODE': '8(x2),1', 'SLURM_NODEID': '2'}, 1),
    ({'SLURM_TASKS_PER_NODE': '8(x2),1', 'SLURM_NODEID': '1'}, 8),
    ({'SLURM_STEP_TASKS_PER_NODE': '1(x4)', 'SLURM_TASKS_PER_NODE': '8(x4)'}, 1),
    ({'SLURM_NTASKS': '4', 'SLURM_JOB_NUM_NODES': '4'}, 1),
    ({'SLURM_NTASKS': '32', 'SLURM_JOB_NUM_NODES': '4'}, None), ({}, None)])
def test_tasks_on_this_node(environ, tasks):
  assert tasks_on_this_node(environ) == tasks


def test_outside_slurm_or_with_explicit_ids_jax_decides():
  assert local_device_ids({'SLURM_NTASKS_PER_NODE': '1'}) is None  # no SLURM job
  assert local_device_ids({**PER_HOST, 'JAX_LOCAL_DEVICE_IDS': '0,1'}) is None
