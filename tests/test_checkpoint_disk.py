"""A full or read-only checkpoint directory: one clear line, earlier checkpoints intact.

Uses a small tmpfs mounted on WORKDIR/checkpoints (needs root, as in CI; skipped otherwise).
"""

import os
import shutil
import subprocess

import pytest

from tests.helpers import run_train

FAST = ['--config.model.image_size=16', '--config.model.context_length=12',
        '--config.batch_size=16', '--config.optim.warmup_steps=1', '--config.log_every=1',
        '--config.eval.zeroshot=', '--config.checkpoint_every=2']


@pytest.fixture
def small_disk(tmp_path):
  folder = tmp_path / 'run' / 'checkpoints'
  folder.mkdir(parents=True)
  # One checkpoint of the demo model is ~18 MB: 28 MB holds one, not two.
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=28m', 'tmpfs', str(folder)],
                    capture_output=True).returncode:
    pytest.skip('needs permission to mount a tmpfs')
  yield tmp_path / 'run'
  subprocess.run(['umount', '-l', str(folder)], capture_output=True)


def _errors(result):
  return [l for l in result.stderr.splitlines() if l.startswith('error: ')]


def test_full_disk_is_one_line_and_keeps_earlier_checkpoints(small_disk):
  result = run_train(small_disk, *FAST, '--config.total_steps=6')
  errors = _errors(result)
  assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
  assert 'writing checkpoint 4' in errors[0] and 'No space left on device' in errors[0]
  assert 'the complete checkpoints [2] are intact' in errors[0]
  assert 'Traceback' not in result.stderr
  # Given room (the workdir moved to a bigger disk), the same command resumes from checkpoint 2;
  # the half-written checkpoint's temporary folder is cleaned up at start.
  roomy = small_disk.parent / 'roomy'
  shutil.copytree(small_disk, roomy)
  assert any('tmp' in name for name in os.listdir(roomy / 'checkpoints'))
  again = run_train(roomy, *FAST, '--config.total_steps=6')
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from {roomy}/checkpoints/2' in again.stdout
  assert sorted(os.listdir(roomy / 'checkpoints')) == ['4', '6']


def test_read_only_checkpoint_directory_is_refused_before_compiling(small_disk):
  assert run_train(small_disk, *FAST, '--config.total_steps=2').returncode == 0
  subprocess.run(['mount', '-o', 'remount,ro', str(small_disk / 'checkpoints')], check=True)
  result = run_train(small_disk, *FAST, '--config.total_steps=4')
  errors = _errors(result)
  assert result.returncode == 2 and len(errors) == 1
  assert 'checkpoint directory' in errors[0] and 'is not writable' in errors[0]


@pytest.mark.parametrize('logger', ['absl', 'asyncio'])
def test_background_write_failures_are_logged_without_traceback(caplog, logger):
  """orbax (absl) and asyncio ("Task exception was never retrieved") report a failed background
  write with a traceback; the trainer keeps their message line only."""
  import logging
  import sys
  from pretrain.runtime.run_control import quiet_background_errors
  hook = sys.unraisablehook
  try:
    quiet_background_errors()
    try:
      raise OSError(28, 'No space left on device')
    except OSError:
      logging.getLogger(logger).error('Task exception was never retrieved', exc_info=True)
  finally:
    sys.unraisablehook = hook
  record = caplog.records[-1]
  assert record.getMessage() == 'Task exception was never retrieved' and record.exc_info is None
