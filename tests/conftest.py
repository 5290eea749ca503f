"""Eight simulated CPU devices for every test, set before jax is imported; huge-page malloc for
the pytest-xdist workers, which start after the controller has read this file (as the trainer
gives itself, pretrain/backends/cpu/host_memory.py)."""

import os
import shutil
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from pretrain.backends.cpu import host_memory  # noqa: E402  (after sys.path has the checkout)

_HUGE_PAGES = host_memory.huge_page_env_here(os.environ)
if _HUGE_PAGES:
  os.environ['GLIBC_TUNABLES'] = _HUGE_PAGES['GLIBC_TUNABLES']

# One compilation cache for the trainers the suite starts (tests/helpers.py shared_compile_cache);
# set here, before pytest-xdist starts its workers, so they all inherit the same folder.
# A folder given in the environment is the caller's to keep (e.g. across local runs).
_OWN_COMPILE_CACHE = 'PRETRAIN_TEST_COMPILE_CACHE' not in os.environ
if _OWN_COMPILE_CACHE:
  os.environ['PRETRAIN_TEST_COMPILE_CACHE'] = tempfile.mkdtemp(prefix='pretrain-test-compile-cache-')


def pytest_unconfigure(config):
  """The process that made the session's compilation cache removes it (workers inherit it)."""
  if _OWN_COMPILE_CACHE:
    shutil.rmtree(os.environ['PRETRAIN_TEST_COMPILE_CACHE'], ignore_errors=True)


# Bucket fixtures (real GCS/S3 API servers on 127.0.0.1), for any test module that asks for them.
from tests.emulators import gcs, s3  # noqa: E402,F401
