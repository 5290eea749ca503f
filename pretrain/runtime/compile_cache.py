"""jax's persistent compilation cache: a restarted (preempted) run loads its compiled step from disk
instead of compiling it again."""

import jax
from jax.experimental.compilation_cache import compilation_cache

from data import storage

AUTO = 'auto'  # `config.compile_cache_dir`: WORKDIR/compile_cache ('' turns the cache off)
SUBDIR = 'compile_cache'


def cache_dir(setting: str, workdir: str) -> str | None:
  """The folder the cache lives in for `config.compile_cache_dir` = `setting`; None = off.

  'auto' is WORKDIR/compile_cache, so it follows the run to any machine that resumes it (jax reads
  and writes a gs:// folder through etils.epath, as the rest of the run does).
  """
  if not setting:
    return None
  return storage.join(workdir, SUBDIR) if setting == AUTO else setting


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
