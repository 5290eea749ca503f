"""Two real processes (jax.distributed over 127.0.0.1) train exactly like one process."""

import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT, read_metrics, run_train

COMMON = ['--config.model.image_size=16', '--config.model.context_length=12',
          '--config.batch_size=16', '--config.optim.warmup_steps=1', '--config.log_every=1',
          '--config.checkpoint_every=2', '--config.eval.zeroshot=', '--config.mesh.fsdp=2']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_two_processes(workdir, *overrides) -> list[subprocess.Popen]:
  """Starts the 2-process run (4 simulated devices each); `finish` waits for it."""
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(pid),
               XLA_FLAGS='--xla_force_host_platform_device_count=4')
    cmd = [sys.executable, '-m', 'pretrain.train', '--config', 'configs/demo.py', '--workdir',
           str(workdir), *COMMON, *overrides]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def finish(procs: list[subprocess.Popen]):
  """(exit codes, (stdout, stderr) of each process)."""
  outputs = [p.communicate(timeout=600) for p in procs]
  return [p.returncode for p in procs], outputs


def two_and_one(tmp_path, *overrides):
  """The 2-process run and the 1-process, 8-device reference, run side by side."""
  procs = start_two_processes(tmp_path / 'two', *overrides)
  one = run_train(tmp_path / 'one', *COMMON, *overrides, devices=8)
  codes, outputs = finish(procs)
  assert codes == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert one.returncode == 0, one.stderr[-2000:]


@pytest.mark.slow
def test_two_hosts_equal_one_host_and_checkpoint_moves_between_them(tmp_path):
  two_and_one(tmp_path, '--config.total_steps=4')
  two_rows, one_rows = read_metrics(tmp_path / 'two'), read_metrics(tmp_path / 'one')
  assert [r['step'] for r in two_rows] == [1, 2, 3, 4]
  for a, b in zip(two_rows, one_rows):
    print(f"step {a['step']}: 2x4 loss {a['loss']:.7f}  1x8 loss {b['loss']:.7f}  "
          f"diff {abs(a['loss'] - b['loss']):.1e}")  # shown with pytest -s
    assert abs(a['loss'] - b['loss']) <= 1e-6, (a, b)
    assert a['acc_i2t'] == b['acc_i2t'] and a['acc_t2i'] == b['acc_t2i']
  # The 2-process checkpoint restores in 1 process on another mesh, and training continues.
  more = run_train(tmp_path / 'two', *COMMON, '--config.total_steps=6', '--config.mesh.fsdp=1',
                   devices=8)
  assert more.returncode == 0, more.stderr[-2000:]
  assert f'resumed from {tmp_path / "two"}/checkpoints/4' in more.stdout
  assert [r['step'] for r in read_metrics(tmp_path / 'two')][-2:] == [5, 6]


@pytest.mark.slow
@pytest.mark.parametrize('loss', [
    ['--config.loss.impl=tiled', '--config.loss.tile=3', '--config.accum_steps=2'],
    ['--config.loss.name=sigmoid', '--config.loss.init_logit_scale=10.0']])
def test_two_hosts_ring_losses_equal_one_host(tmp_path, loss):
  """The ppermute rings (and gradient caching) cross the process boundary exactly."""
  two_and_one(tmp_path, '--config.total_steps=3', *loss)
  two_rows, one_rows = read_metrics(tmp_path / 'two'), read_metrics(tmp_path / 'one')
  assert [r['step'] for r in two_rows] == [1, 2, 3]
  for a, b in zip(two_rows, one_rows):
    print(f"step {a['step']}: 2x4 loss {a['loss']:.7f}  1x8 loss {b['loss']:.7f}  "
          f"diff {abs(a['loss'] - b['loss']):.1e}")  # shown with pytest -s
    assert abs(a['loss'] - b['loss']) <= 1e-6, (a, b)
    assert a['acc_i2t'] == b['acc_i2t'] and a['acc_t2i'] == b['acc_t2i']


@pytest.mark.slow
def test_two_hosts_on_a_gs_workdir_write_run_files_once(gcs, tmp_path):
  """Both processes read and write one bucket workdir (a real GCS API emulator); process 0 alone
  writes the run-level files, orbax the checkpoints of both."""
  import json
  from data import storage
  from pretrain.runtime.checkpoint import complete_steps
  workdir = storage.join(gcs.bucket('two-hosts'), 'run')
  procs = start_two_processes(workdir, '--config.total_steps=4')
  one = run_train(tmp_path / 'one', *COMMON, '--config.total_steps=4', devices=8)
  codes, outputs = finish(procs)
  assert codes == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert one.returncode == 0, one.stderr[-2000:]
  two_rows = [json.loads(line) for line in storage.read_text(
      storage.join(workdir, 'metrics.jsonl')).splitlines()]
  assert [r['step'] for r in two_rows] == [1, 2, 3, 4]  # one writer: no row twice
  for a, b in zip(two_rows, read_metrics(tmp_path / 'one')):
    assert abs(a['loss'] - b['loss']) <= 1e-6, (a, b)
  assert complete_steps(workdir) == [2, 4]
  assert sorted(storage.listdir(workdir)) == [
      'checkpoints', 'compile_cache', 'config.json', 'metrics.jsonl', 'tb',
      'tokenizer.json']  # the lease released
  assert 'step 4/4' in outputs[0][0] and 'step 4/4' not in outputs[1][0]
