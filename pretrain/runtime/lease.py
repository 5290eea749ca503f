"""The workdir lock on a gs:// bucket, where flock means nothing: a lease object with a heartbeat.

WORKDIR/.lease names its holder. It is created only if absent and renewed (every TTL/4 s, by a
thread) only if it is still the generation its holder wrote: GCS generation preconditions
(ifGenerationMatch), so of two trainers racing for a workdir exactly one wins, and a holder whose
lease was taken over learns it at its next renewal and stops. A lease not renewed for TTL seconds
(its server-side update time against this host's clock: hosts must agree within a few seconds, as
NTP keeps cloud VMs) has expired and may be taken over: a killed trainer frees its workdir after
at most TTL seconds. A holder that cannot renew for TTL seconds (storage unreachable) stops too,
since another trainer may take over meanwhile. TTL: $PRETRAIN_LEASE_SECONDS, default 60.
"""

import json
import os
import re
import socket
import sys
import threading
import time
import uuid

from data import storage
from data.errors import ConfigError

LEASE_FILE = '.lease'
TTL_ENV = 'PRETRAIN_LEASE_SECONDS'
DEFAULT_TTL = 60.0


def lease_seconds() -> float:
  """The lease's time to live, from the environment."""
  value = os.environ.get(TTL_ENV, '')
  try:
    ttl = float(value) if value else DEFAULT_TTL
  except ValueError:
    raise ConfigError(f'{TTL_ENV}={value!r} is not a number of seconds') from None
  if ttl < 2:
    raise ConfigError(f'{TTL_ENV}={value} is too short: give at least 2 seconds')
  return ttl


class BucketLease:
  """Holds WORKDIR/.lease from construction to release(); refuses a workdir another holds."""

  def __init__(self, workdir: str):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    from google.cloud import storage as gcs  # pylint: disable=import-outside-toplevel
    self._errors = exceptions
    self.workdir, self.ttl = workdir, lease_seconds()
    self.path = storage.join(workdir, LEASE_FILE)
    bucket, self._name = self.path.split('://', 1)[1].split('/', 1)
    try:
      self._bucket = gcs.Client().bucket(bucket)
    except Exception as e:  # pylint: disable=broad-except  (missing credentials, bad project)
      raise ConfigError(f'workdir {workdir}: cannot open the lease {self.path} '
                        f'({type(e).__name__}: {storage.first_line(e)})') from None
    self._token = uuid.uuid4().hex
    self.owner = (f'pid {os.getpid()} on {socket.gethostname()} since '
                  f'{time.strftime("%Y-%m-%d %H:%M:%S")}')
    self._generation = self._acquire()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._heartbeat, name='workdir-lease', daemon=True)
    self._thread.start()

  def _record(self) -> bytes:
    return json.dumps({'owner': self.owner, 'token': self._token, 'ttl_s': self.ttl}).encode()

  def _write(self, generation: int, timeout: float) -> int:
    """Writes the lease if the object is at `generation` (0: absent); its new generation."""
    blob = self._bucket.blob(self._name)
    # No client retries: a retried write whose first try landed fails its precondition; _renew
    # tells that case apart by the token.
    blob.upload_from_string(self._record(), content_type='application/json',
                            if_generation_match=generation, timeout=timeout, retry=None)
    return blob.generation

  def _acquire(self) -> int:
    """Takes a missing or expired lease; a live one is a ConfigError naming its holder."""
    try:
      current = self._bucket.get_blob(self._name, timeout=30)
      if current is not None:
        age = time.time() - current.updated.timestamp()
        if age < self.ttl:
          holder = json.loads(current.download_as_bytes()).get('owner', 'another trainer')
          raise ConfigError(
              f'workdir {self.workdir} is in use by another trainer ({holder}; lease renewed '
              f'{max(age, 0):.0f} s ago); wait for it to finish or stop it first (a killed '
              f"trainer's lease expires {self.ttl:.0f} s after its last renewal)")
      return self._write(0 if current is None else current.generation, timeout=30)
    except self._errors.PreconditionFailed:
      raise ConfigError(f'workdir {self.workdir} is in use by another trainer (it took the lease '
                        f'{self.path} just now); wait for it to finish or stop it first') from None
    except self._errors.GoogleAPIError as e:
      raise ConfigError(f'workdir {self.workdir}: cannot take the lease {self.path} '
                        f'({type(e).__name__}: {storage.first_line(e)})') from None

  def _renew(self, timeout: float) -> None:
    try:
      self._generation = self._write(self._generation, timeout)
    except self._errors.PreconditionFailed:
      current = self._bucket.get_blob(self._name, timeout=timeout)
      if current is None or json.loads(current.download_as_bytes()).get('token') != self._token:
        raise
      self._generation = current.generation  # our own write landed; its reply was lost

  def _heartbeat(self) -> None:
    interval = self.ttl / 4
    renewed = time.monotonic()
    while not self._stop.wait(interval):
      try:
        self._renew(timeout=interval)
        renewed = time.monotonic()
      except self._errors.PreconditionFailed:
        self._lost('another trainer took the lease over (this one was not renewed in time)')
      except Exception as e:  # pylint: disable=broad-except  (network errors of every kind)
        if time.monotonic() - renewed >= self.ttl - interval:
          self._lost(f'the bucket did not answer for {time.monotonic() - renewed:.0f} s '
                     f'({_cause(e)})')

  def _lost(self, why: str) -> None:
    """Stops the process at once: another trainer may own the workdir now."""
    if self._stop.is_set():
      return
    print(f'error: lost the lock on workdir {self.workdir}: {why}; stopping without writing more. '
          'Complete checkpoints are intact: re-run the same command to resume', file=sys.stderr,
          flush=True)
    sys.stdout.flush()
    os._exit(1)

  def release(self) -> None:
    """Stops renewing and deletes the lease (if it is still ours); else it expires after TTL."""
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join()
    try:
      self._bucket.blob(self._name).delete(if_generation_match=self._generation, timeout=10)
    except Exception:  # pylint: disable=broad-except  (gone, taken over or unreachable: expires)
      pass


def _cause(error: BaseException) -> str:
  """'[Errno 111] Connection refused' rather than a client's whole retry story."""
  found = re.search(r'\[Errno -?\d+\] [^"\')]+', str(error))
  return found.group(0) if found else f'{type(error).__name__}: {storage.first_line(error)}'
