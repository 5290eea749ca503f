"""Non-finite updates, SIGTERM, the workdir lock, mismatched checkpoints, no pickle."""

import ast
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from data.records import BAD_KINDS
from pretrain.step.optim import make_optimizer
from pretrain.parallel.sharding import batch_sharding
from pretrain.runtime.loop import nonfinite_step
from pretrain.step.train_step import StepBuilder
from pretrain.config.cli import load_saved_config
from tests.helpers import ROOT, mesh, read_metrics, run_train, tiny_config

FAST = ['--config.model.image_size=16', '--config.model.context_length=12',
        '--config.batch_size=16', '--config.optim.warmup_steps=1', '--config.log_every=1',
        '--config.eval.zeroshot=']


def test_nonfinite_update_leaves_state_untouched():
  config = tiny_config()
  the_mesh = mesh(4, 2)
  tx, schedule = make_optimizer(config.optim, 100)
  builder = StepBuilder(config, the_mesh, tx, schedule)
  step, poisoned = builder.jit_step(), nonfinite_step(builder)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 16, 16, 3), np.uint8),
           'text': np.tile(np.array([[5, 6, 2, 0, 0, 0, 0, 0]], np.int32), (16, 1)),
           'bad': np.zeros((16, len(BAD_KINDS)), np.int32)}
  batch = {k: jax.device_put(v, batch_sharding(the_mesh)) for k, v in batch.items()}
  state, _ = step(builder.init_state(), batch)  # attempt 1: a normal update
  before = jax.device_get(state)
  state, metrics = poisoned(state, batch)  # attempt 2: its loss is NaN
  after = jax.device_get(state)
  assert bool(metrics['skipped']) and int(after.step) == 1
  assert int(after.skipped_updates) == 1 and int(after.consecutive_skips) == 1
  same = jax.tree.map(np.array_equal, (before.params, before.opt_state, before.rng),
                      (after.params, after.opt_state, after.rng))
  assert all(jax.tree.leaves(same))
  state, metrics = step(state, batch)  # attempt 3: normal again
  assert not bool(metrics['skipped']) and int(state.step) == 2
  assert int(state.consecutive_skips) == 0 and int(state.skipped_updates) == 1


def test_nonfinite_guard_copies_no_parameter_or_optimizer_state():
  """The guard updates under a conditional: a select of new against old values made XLA copy
  every parameter's Adam moments first (1.2 GB per step on `b32`)."""
  config = tiny_config()
  tx, schedule = make_optimizer(config.optim, 100)
  builder = StepBuilder(config, mesh(1, 1, jax.devices()[:1]), tx, schedule)
  batch = {'image': jax.ShapeDtypeStruct((16, 16, 16, 3), np.uint8),
           'text': jax.ShapeDtypeStruct((16, 8), np.int32),
           'bad': jax.ShapeDtypeStruct((16, len(BAD_KINDS)), np.int32)}
  hlo = builder.jit_step().lower(builder.abstract_state, batch).compile().as_text()
  assert re.search(r'%state_params_[\w.]+ = ', hlo)  # the names the pattern below looks for
  copied = re.findall(r'copy\(%state_((?:params|opt_state)\w+)', hlo)
  assert not copied, copied[:5]


def test_consecutive_nonfinite_updates_stop_the_run_keeping_the_last_checkpoint(tmp_path):
  result = run_train(tmp_path, *FAST, '--config.total_steps=8', '--config.checkpoint_every=2',
                     '--config.debug.nonfinite_at_attempts=(4,5,6)',
                     '--config.max_consecutive_skips=3')
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert result.returncode == 1 and len(errors) == 1
  assert '3 non-finite updates in a row at step 4' in errors[0]
  assert 'last good checkpoint is step 2' in errors[0]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
  # Without the injected NaNs (a fixed cause), the same run resumes from step 2 and finishes.
  again = run_train(tmp_path, *FAST, '--config.total_steps=8', '--config.checkpoint_every=2')
  assert again.returncode == 0 and 'resumed from' in again.stdout


def test_skipped_update_is_counted_in_metrics(tmp_path):
  result = run_train(tmp_path, *FAST, '--config.total_steps=4',
                     '--config.debug.nonfinite_at_attempts=(2,)')
  assert result.returncode == 0, result.stderr[-2000:]
  rows = read_metrics(tmp_path)
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  assert [r['skipped_updates'] for r in rows] == [0, 1, 1, 1]
  assert 'non-finite, update skipped' in result.stderr


def _start(workdir, *overrides):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  cmd = [sys.executable, '-m', 'pretrain.train', '--config', 'configs/demo.py', '--workdir',
         str(workdir), *FAST, *overrides]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _wait_for_rows(workdir, rows, process, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if (workdir / 'metrics.jsonl').exists() and len(read_metrics(workdir)) >= rows:
      return
    assert process.poll() is None, process.communicate()
    time.sleep(0.2)
  raise TimeoutError


def test_sigterm_checkpoints_and_exits_and_a_second_trainer_is_refused(tmp_path):
  trainer = _start(tmp_path, '--config.total_steps=100000', '--config.checkpoint_every=100000')
  try:
    _wait_for_rows(tmp_path, 3, trainer)
    second = run_train(tmp_path, *FAST, '--config.total_steps=100000')
    lines = [l for l in second.stderr.splitlines() if l.startswith('error: ')]
    assert second.returncode == 2 and len(lines) == 1 and 'is in use by another trainer' in lines[0]
    start = time.time()
    trainer.send_signal(signal.SIGTERM)
    out, _ = trainer.communicate(timeout=60)
    assert time.time() - start < 60 and trainer.returncode == 0
  finally:
    trainer.kill()
  step = int(out.split('SIGTERM: checkpointed step ')[1].split()[0])
  assert os.listdir(tmp_path / 'checkpoints') == [str(step)] and step >= 3
  # The lock died with the process: the same command resumes.
  resumed = run_train(tmp_path, *FAST, f'--config.total_steps={step + 1}')
  assert resumed.returncode == 0 and f'resumed from {tmp_path}/checkpoints/{step}' in resumed.stdout


def test_ctrl_c_checkpoints_like_sigterm(tmp_path):
  trainer = _start(tmp_path, '--config.total_steps=100000', '--config.checkpoint_every=100000')
  try:
    _wait_for_rows(tmp_path, 3, trainer)
    trainer.send_signal(signal.SIGINT)
    out, err = trainer.communicate(timeout=60)
  finally:
    trainer.kill()
  assert trainer.returncode == 0 and 'Traceback' not in err, err[-2000:]
  step = int(out.split('SIGINT: checkpointed step ')[1].split()[0])
  assert os.listdir(tmp_path / 'checkpoints') == [str(step)]


def test_a_second_ctrl_c_exits_at_once():
  # The handler itself, in a process of its own: the first Ctrl-C only asks the loop to stop, the
  # second ends the process there and then (exit 130), whatever the loop is doing.
  script = ('import os, signal, time\n'
            'from pretrain.runtime.run_control import StopRequest\n'
            'stop = StopRequest()\n'
            'os.kill(os.getpid(), signal.SIGINT)\n'
            'assert stop.requested and stop.signal_name == "SIGINT"\n'
            'os.kill(os.getpid(), signal.SIGINT)\n'
            'time.sleep(30)\n'
            'print("still running")\n')
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=25)
  assert result.returncode == 130 and 'still running' not in result.stdout
  assert 'second Ctrl-C: exiting now' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('module', ['pretrain.train', 'pretrain.plan'])
def test_help_lists_the_flags_and_where_fields_are_documented(module):
  env = dict(os.environ, PYTHONPATH=ROOT)
  for flag in ('-h', '--help'):
    result = subprocess.run([sys.executable, '-m', module, flag], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == '', result.stderr
    assert '--config PATH[:ARG]' in result.stdout and '--config.FIELD=VALUE' in result.stdout
    assert 'configs/common.py' in result.stdout


def test_a_resume_keeps_the_runs_identity(tmp_path):
  assert run_train(tmp_path, *FAST, '--config.total_steps=2').returncode == 0
  first = (tmp_path / 'config.json').read_text()
  # Fields that define the run: refused in one line naming them; nothing in the workdir changes.
  changed = run_train(tmp_path, *FAST, '--config.total_steps=4', '--config.batch_size=64',
                      '--config.optim.lr=0.01')
  lines = [l for l in changed.stderr.splitlines() if l.startswith('error: ')]
  assert changed.returncode == 2 and len(lines) == 1, changed.stderr[-2000:]
  assert 'batch_size (16 -> 64), optim.lr (0.001 -> 0.01)' in lines[0]
  assert '--allow_config_change' in lines[0]
  assert (tmp_path / 'config.json').read_text() == first
  assert not (tmp_path / 'config_history.jsonl').exists()
  # Another model even with the override: the shape check names the parameter, config.json stays.
  other = run_train(tmp_path, *FAST, '--config.total_steps=4', '--config.model.variant=tiny',
                    '--allow_config_change')
  lines = [l for l in other.stderr.splitlines() if l.startswith('error: ')]
  assert other.returncode == 2 and len(lines) == 1
  assert 'parameter img/cls_token has shape (1, 1, 128) but the config makes (1, 1, 256)' in lines[0]
  assert (tmp_path / 'config.json').read_text() == first
  # Cadence and length may change; each change is recorded with the step it applies from.
  longer = run_train(tmp_path, *FAST, '--config.total_steps=3', '--config.log_every=3')
  assert longer.returncode == 0, longer.stderr[-2000:]
  (entry,) = [json.loads(l) for l in (tmp_path / 'config_history.jsonl').read_text().splitlines()]
  assert entry['from_step'] == 2 and entry['allow_config_change'] is False
  assert entry['changes']['total_steps'] == {'was': 2, 'now': 3}
  assert load_saved_config(str(tmp_path / 'config.json')).total_steps == 3
  # The override is recorded as such.
  forced = run_train(tmp_path, *FAST, '--config.total_steps=4', '--config.log_every=3',
                     '--config.optim.lr=0.002', '--allow_config_change')
  assert forced.returncode == 0, forced.stderr[-2000:]
  last = json.loads((tmp_path / 'config_history.jsonl').read_text().splitlines()[-1])
  assert last['allow_config_change'] is True and last['from_step'] == 3
  assert last['changes']['optim.lr'] == {'was': 0.001, 'now': 0.002}


def test_workdir_that_cannot_be_created(tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  result = run_train(tmp_path / 'file' / 'run', *FAST, '--config.total_steps=2')
  assert result.returncode == 2 and 'cannot be created' in result.stderr


def test_no_module_of_ours_imports_pickle():
  banned = {'pickle', 'cPickle', 'dill', 'cloudpickle', 'shelve', 'marshal'}
  offenders = []
  for path in pathlib.Path(ROOT).rglob('*.py'):
    if any(part.startswith('.') or part in ('venv', '.venv') for part in path.parts):
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name.split('.')[0] for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module.split('.')[0]]
      elif isinstance(node, ast.keyword) and node.arg == 'allow_pickle' and not (
          isinstance(node.value, ast.Constant) and node.value.value is False):
        names = ['allow_pickle']  # numpy's np.save pickles objects unless told not to
      offenders += [f'{path}: {n}' for n in names if n in banned | {'allow_pickle'}]
  assert offenders == []


@pytest.mark.slow
def test_three_random_kills_resume_bit_identical(tmp_path):
  from benchmarks.crash_resume import run
  row = run(kills=3, seed=1, total_steps=40, root=str(tmp_path))
  assert row['kills'] == 3 and 1 <= row['resumed'] <= row['kills']
  assert row['completed'] and row['bit_identical'] and row['unreadable'] == 0
  assert row['failed_starts'] == 0
