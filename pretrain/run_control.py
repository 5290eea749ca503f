"""Owning a workdir and stopping cleanly: the workdir lock and the SIGTERM handler."""

import fcntl
import os
import signal
import socket
import time

from pretrain.errors import ConfigError


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
  """Set by SIGTERM (what TPU/GPU schedulers send before killing): checkpoint and exit."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:
    self.requested = True

  def restore(self) -> None:
    """Puts back the previous SIGTERM handler."""
    signal.signal(signal.SIGTERM, self._previous)
