"""The trainer's run files on a gs:// workdir (a real fake-gcs-server, tests/emulators.py).

The trainings read their data from the bucket too (a mixture of wds:gs:// shards and a csv:gs://
file) and are compared with the same config and data on local disk. Checkpoints, metrics.jsonl, TensorBoard events, config.json and config_history.jsonl in the bucket;
SIGKILL mid-run and mid-checkpoint resumes bit-identical to a local run; the lease lock; the
endpoint going away; a missing bucket and an s3:// workdir refused in one line.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data import storage
from data.make_corpus import write_corpus
from data.errors import ConfigError
from pretrain.config.cli import load_saved_config
from pretrain.runtime.checkpoint import complete_steps, restore_params
from pretrain.runtime.lease import BucketLease
from pretrain.runtime.logger import MetricsLogger
from pretrain.step.train_step import model_graphdef_and_shapes
from tests.helpers import ROOT, run_train, tb_events

FAST = ['--config.model.image_size=16', '--config.model.context_length=12',
        '--config.batch_size=16', '--config.optim.warmup_steps=1', '--config.log_every=1',
        '--config.eval.zeroshot=', '--config.checkpoint_every=2', '--config.total_steps=6']
LEASE_S = 4  # short leases, so a killed trainer's workdir frees quickly


def _params(workdir: str, step: int):
  config = load_saved_config(storage.join(workdir, 'config.json'))
  _, shapes = model_graphdef_and_shapes(config)
  one = NamedSharding(jax.sharding.Mesh(jax.devices()[:1], ('x',)), P())
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), shapes)
  return restore_params(workdir, step, abstract)[1]


def _identical(a, b) -> bool:
  same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
  return all(jax.tree.leaves(same))


def _rows(workdir: str) -> list[dict]:
  return [json.loads(line) for line in storage.read_text(
      storage.join(workdir, 'metrics.jsonl')).splitlines()]


def _errors(result) -> list[str]:
  return [line for line in result.stderr.splitlines() if line.startswith('error: ')]


def _start(workdir: str, *overrides) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PRETRAIN_LEASE_SECONDS=str(LEASE_S))
  cmd = [sys.executable, '-m', 'pretrain.train', '--config', 'configs/demo.py', '--workdir',
         workdir, *FAST, *overrides]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _objects(prefix: str) -> list[str]:
  fs, inner = storage.filesystem(prefix)
  fs.invalidate_cache()
  try:
    return fs.find(inner)
  except FileNotFoundError:
    return []


def _wait_until(condition, process: subprocess.Popen, timeout: float = 400) -> None:
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline, 'timed out'
    time.sleep(0.02)


def _writing(workdir: str, step: int) -> bool:
  """Some object of checkpoint `step` is written, not yet its commit marker."""
  found = _objects(storage.join(workdir, 'checkpoints', str(step)))
  return bool(found) and not any(o.endswith(f'/{step}/commit_success.txt') for o in found)


def _rerun(workdir: str, *overrides):
  env = {'PRETRAIN_LEASE_SECONDS': str(LEASE_S)}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    return run_train(workdir, *FAST, *overrides)
  finally:
    for k, v in old.items():
      os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _mixture(root: str) -> str:
  """Half wds shards, half a csv file, under `root` (a local folder or a bucket)."""
  wds = write_corpus('wds', storage.join(root, 'wds'), 48, image_size=16, per_shard=16)
  csv = write_corpus('csv', storage.join(root, 'csv'), 48, image_size=16)
  return f'--config.data.train=0.5*{wds};0.5*{csv}'


@pytest.fixture(scope='module')
def data(gcs, tmp_path_factory):
  """(the data override on local disk, the same corpus's override in a bucket)."""
  local = _mixture(str(tmp_path_factory.mktemp('corpus')))
  in_bucket = _mixture(storage.join(gcs.bucket('run-corpus'), 'corpus'))
  assert 'wds:gs://run-corpus/corpus/wds/' in in_bucket and 'csv:gs://' in in_bucket
  return local, in_bucket


@pytest.fixture(scope='module')
def local_reference(data, tmp_path_factory):
  """Parameters after 6 steps of the same config and data on local disk, uninterrupted."""
  workdir = str(tmp_path_factory.mktemp('local_run'))
  result = run_train(workdir, *FAST, data[0])
  assert result.returncode == 0, result.stderr[-2000:]
  return _params(workdir, 6)


def test_lease_refuses_a_live_holder_and_frees_a_dead_ones_workdir(gcs, monkeypatch):
  monkeypatch.setenv('PRETRAIN_LEASE_SECONDS', '2')
  workdir = storage.join(gcs.bucket('lease-unit'), 'run')
  first = BucketLease(workdir)
  time.sleep(3)  # beyond the TTL: the heartbeat keeps it alive
  with pytest.raises(ConfigError, match=r'is in use by another trainer \(pid \d+ on ') as info:
    BucketLease(workdir)
  assert '\n' not in str(info.value)
  first._stop.set()  # pylint: disable=protected-access  (as if killed: no renewals, no delete)
  first._thread.join()  # pylint: disable=protected-access
  time.sleep(2.2)
  second = BucketLease(workdir)  # expired: taken over
  from google.api_core.exceptions import PreconditionFailed
  with pytest.raises(PreconditionFailed):  # the old holder's next renewal fails
    first._renew(timeout=5)  # pylint: disable=protected-access
  second.release()
  assert not storage.exists(storage.join(workdir, '.lease'))
  BucketLease(workdir).release()  # released: free at once


@pytest.mark.parametrize('kind', ['local', 'gs', 's3'])
def test_append_bytes(kind, tmp_path, request):
  if kind == 'local':
    path = str(tmp_path / 'sub' / 'log.jsonl')
  else:
    emulator = request.getfixturevalue('gcs' if kind == 'gs' else 's3')
    path = storage.join(emulator.bucket(f'append-{kind}'), 'run', 'log.jsonl')
  for i in range(5):
    storage.append_bytes(path, f'{i}\n'.encode())
  assert storage.read_text(path) == '0\n1\n2\n3\n4\n'
  assert storage.listdir(storage.parent(path)) == ['log.jsonl']  # no part objects left


def test_metrics_and_events_append_to_bucket_objects(gcs, tmp_path):
  workdir = storage.join(gcs.bucket('logger-unit'), 'run')
  for start in (1, 4):  # a second logger (a resumed run) appends to the same objects
    logger = MetricsLogger(workdir, 10)
    for step in range(start, start + 3):
      logger.write(step, {'loss': step / 10, 'batch_crc32': 4000000000 + step})
    logger.close()
  rows = _rows(workdir)
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert rows[-1]['batch_crc32'] == 4000000006
  for name in storage.listdir(storage.join(workdir, 'tb')):
    (tmp_path / name).write_bytes(storage.read_bytes(storage.join(workdir, 'tb', name)))
  events = tb_events(tmp_path)
  assert [s for s, tag, _ in events if tag == 'loss'] == [1, 2, 3, 4, 5, 6]
  assert (5, 'batch_crc32/text_summary', '4000000005') in events


def test_s3_workdir_is_refused_in_one_line_before_anything_is_made(tmp_path):
  result = run_train('s3://some-bucket/run', *FAST)
  errors = _errors(result)
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
  assert 'cannot read or write checkpoints in s3://' in errors[0]
  assert 'use a gs:// workdir or a local/NFS folder' in errors[0]
  assert not os.path.exists(os.path.join(ROOT, 's3:'))


def test_missing_bucket_is_one_line(gcs):
  result = run_train('gs://no-such-bucket/run', *FAST)
  errors = _errors(result)
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
  assert errors[0] == ("error: workdir gs://no-such-bucket/run: bucket 'no-such-bucket' does not "
                       'exist (create it first, or check the name)')
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


@pytest.mark.slow
def test_killed_mid_checkpoint_and_mid_run_resumes_bit_identical(gcs, data, local_reference):
  workdir = storage.join(gcs.bucket('killed-run'), 'run')
  trainer = _start(workdir, data[1])
  _wait_until(lambda: _writing(workdir, 4), trainer)  # checkpoint 2 done, 4 being written
  trainer.kill()
  trainer.wait()
  assert complete_steps(workdir) == [2]
  time.sleep(LEASE_S)  # the killed trainer's lease expires
  trainer = _start(workdir, data[1])  # resumes from 2 (lease expired); killed between checkpoints
  _wait_until(lambda: complete_steps(workdir) == [2, 4], trainer)
  trainer.kill()
  trainer.wait()
  time.sleep(LEASE_S)
  last = _rerun(workdir, data[1], '--config.log_every=2')  # a field a resume may change
  assert last.returncode == 0, last.stderr[-3000:]
  assert f'resumed from {workdir}/checkpoints/4' in last.stdout
  assert _identical(_params(workdir, 6), local_reference)
  assert complete_steps(workdir) == [4, 6]  # keep_checkpoints=2 (the demo's), in the bucket
  steps = [r['step'] for r in _rows(workdir)]
  assert set(steps) == set(range(1, 7)) and steps[-1] == 6  # rows up to each checkpoint kept
  history = [json.loads(line) for line in storage.read_text(
      storage.join(workdir, 'config_history.jsonl')).splitlines()]
  assert history[-1]['from_step'] == 4 and history[-1]['changes']['log_every']['now'] == 2
  assert load_saved_config(storage.join(workdir, 'config.json')).log_every == 2
  assert storage.is_file(storage.join(workdir, 'tokenizer.json'))
  assert storage.listdir(storage.join(workdir, 'tb'))
  assert not storage.exists(storage.join(workdir, '.lease'))  # released at the end


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_killed_ones_lease_expires(gcs):
  workdir = storage.join(gcs.bucket('locked-run'), 'run')
  trainer = _start(workdir, '--config.total_steps=100000', '--config.checkpoint_every=100000')
  try:
    _wait_until(lambda: storage.exists(storage.join(workdir, 'metrics.jsonl')), trainer)
    second = _rerun(workdir, '--config.total_steps=100000')
    errors = _errors(second)
    assert second.returncode == 2 and len(errors) == 1, second.stderr[-2000:]
    assert f'workdir {workdir} is in use by another trainer (pid {trainer.pid} on ' in errors[0]
  finally:
    trainer.kill()
    trainer.wait()
  os.environ['PRETRAIN_LEASE_SECONDS'] = str(LEASE_S)
  try:
    with pytest.raises(ConfigError, match='in use by another trainer'):
      BucketLease(workdir)  # just killed: its lease is still fresh
    time.sleep(LEASE_S)
    BucketLease(workdir).release()  # expired: a re-run takes the workdir over
  finally:
    del os.environ['PRETRAIN_LEASE_SECONDS']


@pytest.mark.slow
def test_storage_outage_during_a_checkpoint_is_one_line_and_the_run_resumes(gcs, data,
                                                                            local_reference):
  workdir = storage.join(gcs.bucket('outage-run'), 'run')
  trainer = _start(workdir, data[1])
  try:
    _wait_until(lambda: _writing(workdir, 4), trainer)
    gcs.stop()
    _, err = trainer.communicate(timeout=300)
  finally:
    trainer.kill()
    gcs.start()
  errors = [line for line in err.splitlines() if line.startswith('error: ')]
  assert trainer.returncode == 1 and len(errors) == 1, err[-3000:]
  assert 'the bucket did not answer for' in errors[0] and 'Connection refused' in errors[0]
  assert 'Traceback' not in err
  assert complete_steps(workdir) == [2]
  time.sleep(LEASE_S)
  again = _rerun(workdir, data[1])
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from {workdir}/checkpoints/2' in again.stdout
  assert _identical(_params(workdir, 6), local_reference)
