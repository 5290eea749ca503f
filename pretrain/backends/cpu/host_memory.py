"""Host memory of a training process: glibc's malloc backed by huge pages, freed heap returned.

XLA:CPU allocates a step's temporaries as one large block and frees it when the step ends; glibc
serves a block that large with a fresh mmap, so each step first-touches it again in 4 KiB pages,
each fault zeroing its page. glibc (2.35 and later) backs its mmapped and heap memory with
transparent huge pages when the tunable `glibc.malloc.hugetlb=1` is set: 2 MiB per fault, a few
hundred times fewer faults (figures: benchmarks/README.md). Tunables are read when a process
starts, so the training and eval entry points re-execute themselves once with it set, on hosts
whose jax will run on the CPU only (`huge_page_restart_applies`); `GLIBC_TUNABLES=
glibc.malloc.hugetlb=0` (or any setting of it) is left alone.
"""

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Mapping

from pretrain.backends import will_run_on_accelerator

HUGE_PAGE_TUNABLE = 'glibc.malloc.hugetlb'
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def release_freed_memory() -> bool:
  """Asks glibc to give freed heap pages back to the OS; False where there is no glibc.

  Compiling a train step allocates and frees many small objects (XLA's passes, LLVM); glibc keeps
  those pages mapped, so they would stay in the process's RSS under the step's own buffers.
  Called once, after compiling.
  """
  try:  # find_library may give None: CDLL(None) is the process itself, which links libc.
    trim = ctypes.CDLL(ctypes.util.find_library('c')).malloc_trim
  except (OSError, AttributeError):  # no C library by that name, or not glibc
    return False
  trim(0)
  return True


def huge_page_malloc_env(environ: Mapping[str, str], glibc_version: tuple[int, int] | None,
                         thp_mode: str | None) -> dict[str, str] | None:
  """`environ` with glibc's huge-page tunable added; None where it is set already or cannot work."""
  if glibc_version is None or glibc_version < (2, 35) or thp_mode not in ('always', 'madvise'):
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if HUGE_PAGE_TUNABLE + '=' in tunables:
    return None
  return {**environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, HUGE_PAGE_TUNABLE + '=1']))}


def _glibc_version() -> tuple[int, int] | None:
  library, version = platform.libc_ver()
  if library != 'glibc':
    return None
  try:
    major, minor = version.split('.')[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def _thp_mode() -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'); None if unknown."""
  try:
    with open(_THP_MODE_FILE) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.find('[') + 1:text.find(']')] if '[' in text else None


def huge_page_env_here(environ: Mapping[str, str]) -> dict[str, str] | None:
  """huge_page_malloc_env for this machine's glibc and kernel."""
  return huge_page_malloc_env(environ, _glibc_version(), _thp_mode())


def huge_page_restart_applies(environ: Mapping[str, str]) -> bool:
  """Whether this process should re-execute itself with huge-page malloc: only where jax will run
  on the CPU (pretrain.backends.will_run_on_accelerator, decided before jax is imported)."""
  return not will_run_on_accelerator(environ)


def restart_with_huge_page_malloc() -> None:
  """Re-executes this command with huge-page malloc (module docstring); returns where not needed
  or where jax will run on a GPU or TPU."""
  if not huge_page_restart_applies(os.environ):
    return
  env = huge_page_env_here(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
