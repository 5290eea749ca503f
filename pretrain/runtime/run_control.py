"""Owning a workdir and stopping cleanly: the workdir lock and the SIGTERM/SIGINT handler."""

import fcntl
import logging
import os
import signal
import socket
import sys
import time

from data import storage
from data.errors import ConfigError


def lock_workdir(workdir: str):
  """The lock on a workdir: an flock locally (and on NFS), a lease object in a gs:// bucket
  (pretrain/runtime/lease.py); either has release()."""
  if storage.is_bucket(workdir):
    from pretrain.runtime.lease import BucketLease  # pylint: disable=import-outside-toplevel
    return BucketLease(workdir)
  return WorkdirLock(workdir)


class WorkdirLock:
  """An exclusive flock on WORKDIR/.lock, held for the trainer's lifetime.

  The kernel drops it when the process dies, so a killed run never leaves it stuck.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, '.lock')
    self._file = open(self.path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      owner = self._file.read().strip() or 'another process'
      self._file.close()
      raise ConfigError(f'workdir {workdir} is in use by another trainer ({owner}); '
                        'wait for it to finish or stop it first') from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f'pid {os.getpid()} on {socket.gethostname()} since '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")}')
    self._file.flush()

  def release(self) -> None:
    """Drops the lock (also dropped automatically when the process exits)."""
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


class StopRequest:
  """Set by SIGTERM (what TPU/GPU schedulers send before killing) or Ctrl-C: checkpoint and exit.

  A second Ctrl-C exits at once, without the checkpoint: the way out of a stuck or slow save.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.signal_name = ''
    self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}

  def _handle(self, signum, frame) -> None:
    if signum == signal.SIGINT and self.requested:
      print('\nsecond Ctrl-C: exiting now, without a checkpoint', file=sys.stderr, flush=True)
      os._exit(130)
    if signum == signal.SIGINT:
      print('\nCtrl-C: checkpointing after this step, then stopping (Ctrl-C again to exit now)',
            file=sys.stderr, flush=True)
    self.requested = True
    self.signal_name = signal.Signals(signum).name

  def restore(self) -> None:
    """Puts back the previous handlers."""
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def quiet_background_errors() -> None:
  """One line, not a traceback, for errors raised where nothing can catch them.

  After a failed checkpoint write, tensorstore callbacks fire on orbax's already-closed event
  loop ('Event loop is closed'); the failure itself is reported by CheckpointWriteError.
  """
  def hook(unraisable) -> None:
    if isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(
        unraisable.exc_value):
      return
    print(f'warning: ignored in background: {unraisable.exc_type.__name__}: '
          f'{unraisable.exc_value}', file=sys.stderr, flush=True)
  sys.unraisablehook = hook
  # orbax logs a failed background write with its traceback, and asyncio may log the same failure
  # again as "Task exception was never retrieved" (whichever of its tasks loses the race to the
  # full disk); the message lines are enough.
  for name in ('absl', 'asyncio'):
    logging.getLogger(name).addFilter(_drop_traceback)


def _drop_traceback(record: logging.LogRecord) -> bool:
  record.exc_info, record.exc_text = None, None
  return True
