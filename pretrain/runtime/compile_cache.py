"""jax's persistent compilation cache: a restarted (preempted) run loads its compiled step from disk
instead of compiling it again."""

import importlib.util
import os
from collections.abc import Mapping

import jax
from jax.experimental.compilation_cache import compilation_cache

AUTO = 'auto'  # `config.compile_cache_dir`: WORKDIR/compile_cache ('' turns the cache off)
SUBDIR = 'compile_cache'


def user_cache_dir(environ: Mapping[str, str] = os.environ) -> str:
  """This user's local cache folder for compiled programs ($XDG_CACHE_HOME or ~/.cache)."""
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'pretrain', SUBDIR)


def cache_dir(setting: str, workdir: str, epath_installed: bool | None = None) -> str | None:
  """The folder the cache lives in for `config.compile_cache_dir` = `setting`; None = off.

  'auto' is WORKDIR/compile_cache, so it follows the run to any machine that resumes it. jax
  reads and writes a bucket path (gs://...) through etils.epath; without etils a bucket workdir
  gets this user's local cache folder instead.
  """
  if not setting:
    return None
  if setting != AUTO:
    return setting
  if epath_installed is None:
    epath_installed = importlib.util.find_spec('etils') is not None
  if '://' in workdir and not epath_installed:
    return user_cache_dir()
  return os.path.join(workdir, SUBDIR)


def enable(setting: str, workdir: str) -> str | None:
  """Points jax's persistent cache at `cache_dir(setting, workdir)` (or turns it off); -> the folder.

  Must run before the run's first compile: jax decides whether a process uses the cache at its
  first compile. Every program is cached, however small or quick to compile: a restarted pod pays
  for each one it compiles again.
  """
  path = cache_dir(setting, workdir)
  if path == jax.config.jax_compilation_cache_dir:
    return path
  compilation_cache.reset_cache()  # a folder chosen earlier in this process (tests, notebooks)
  jax.config.update('jax_compilation_cache_dir', path)
  if path is not None:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)  # no size floor
  return path
