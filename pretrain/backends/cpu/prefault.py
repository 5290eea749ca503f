"""Pre-faulting the block XLA:CPU maps for a step's temporaries, while the step runs (CPU only:
`prefault_step_memory`, resolved to False off the CPU by pretrain.backends).

XLA:CPU allocates a step's temporaries as one block when the step starts and frees it when the step
ends; glibc maps a block that large afresh every time, and the step's operations then fault its
pages in as they first write them, spread over the whole step. On a virtual machine that hands
freed memory back to its hypervisor (Linux free page reporting) those late faults cost several
times more than faulting the same pages right after they were freed (`benchmarks.refault`;
figures in benchmarks/README.md). So right after dispatching a step, the train loop -
idle until the step ends - finds the block's new mapping in /proc/self/maps and has the kernel
populate it at once (madvise MADV_POPULATE_WRITE, Linux 5.14+): the same zero-filled pages the step
would have faulted in, only sooner. Values are untouched (a neighbouring anonymous mapping the
kernel merged with the block is made resident too; the peak RSS does not move). Where it cannot
work (not Linux, an older kernel, temporaries too small to be mapped on their own, a block never
found) it switches itself off.
"""

import ctypes
import errno
import sys
import time

MADV_POPULATE_WRITE = 23  # linux/mman.h, Linux 5.14+
# glibc serves blocks under its mmap threshold (at most 32 MiB) from its heap, where they are
# reused instead of faulted afresh: only larger temporaries are looked for.
MIN_BLOCK_BYTES = 64 << 20


def large_anonymous_mappings(maps_text: str, min_bytes: int) -> set[tuple[int, int]]:
  """(start, size) of the writable anonymous mappings of at least `min_bytes` in a maps file."""
  found = set()
  for line in maps_text.splitlines():
    fields = line.split()
    anonymous = len(fields) == 5 or (len(fields) == 6 and fields[5].startswith('[anon'))
    if len(fields) < 5 or not anonymous or not fields[1].startswith('rw'):
      continue
    start, end = (int(address, 16) for address in fields[0].split('-'))
    if end - start >= min_bytes:
      found.add((start, end - start))
  return found


def _read_maps() -> str:
  with open('/proc/self/maps') as f:
    return f.read()


class TempBlockPrefaulter:
  """Call before_dispatch() before each step call and after_dispatch() right after it."""

  def __init__(self, temp_bytes: int, enabled: bool = True, timeout_s: float = 0.2,
               settle_s: float = 0.05, max_misses: int = 3):
    self.min_bytes = max(MIN_BLOCK_BYTES, temp_bytes // 2)  # the block holds most temporaries
    self.enabled = enabled and sys.platform == 'linux' and temp_bytes >= MIN_BLOCK_BYTES
    self.timeout_s, self.settle_s = timeout_s, settle_s
    self.max_misses, self.misses = max_misses, 0
    self.populated_bytes = 0  # over the whole run: what was faulted in here instead of in the step
    self._known: set[tuple[int, int]] = set()
    self._previous = None  # the last step's outputs
    self._madvise = None
    if self.enabled:
      libc = ctypes.CDLL(None, use_errno=True)
      self._madvise = libc.madvise
      self._madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

  def before_dispatch(self) -> None:
    """Notes the large mappings that exist before the step (none of them is its block).

    The previous step's block is unmapped a moment after its outputs are ready; its successor
    often lands at the same address, so a block still mapped here (one that was not there before
    the previous step) is waited for, up to `settle_s`, rather than remembered as known.
    """
    if not self.enabled:
      return
    deadline = time.monotonic() + self.settle_s
    current = large_anonymous_mappings(_read_maps(), self.min_bytes)
    while current - self._known and time.monotonic() < deadline:
      time.sleep(0.001)
      current = large_anonymous_mappings(_read_maps(), self.min_bytes)
    self._known = current

  def after_dispatch(self) -> int:
    """Populates the step's new block once it is mapped; the bytes populated (0 if none)."""
    if not self.enabled:
      return 0
    deadline = time.monotonic() + self.timeout_s
    while not (new := large_anonymous_mappings(_read_maps(), self.min_bytes) - self._known):
      if time.monotonic() > deadline:
        self.misses += 1
        self.enabled = self.misses < self.max_misses
        return 0
      time.sleep(0.002)
    self.misses = 0
    populated = sum(self._populate(start, size) for start, size in sorted(new))
    self.populated_bytes += populated
    return populated

  def dispatch(self, step_fn, *args):
    """step_fn(*args), with the block it maps pre-faulted while it runs; returns its result.

    Waits (without reading anything) for the previous step's outputs first: the block is told
    apart from the previous step's only once that one has finished. The loop fetches the next
    batch before dispatching, so that still overlaps the previous step.
    """
    if self.enabled and self._previous is not None:
      import jax  # here, not at load: this module's tests watch the process's mappings
      jax.block_until_ready([x for x in jax.tree.leaves(self._previous) if not x.is_deleted()])
    self.before_dispatch()
    result = step_fn(*args)
    self.after_dispatch()
    self._previous = result if self.enabled else None
    return result

  def _populate(self, start: int, size: int) -> int:
    if self._madvise(start, size, MADV_POPULATE_WRITE) == 0:
      return size
    if ctypes.get_errno() == errno.EINVAL:  # a kernel without MADV_POPULATE_WRITE
      self.enabled = False
    return 0  # ENOMEM: the step ended and unmapped it first; EINTR: a signal; both harmless


def for_compiled_step(compiled, wanted: bool) -> TempBlockPrefaulter:
  """The prefaulter of a compiled step's temporaries, on where `wanted`: the config resolved for
  the step's platform (pretrain.backends.resolve_for_platform), False off the CPU."""
  if not wanted:
    return TempBlockPrefaulter(0, enabled=False)
  analysis = compiled.memory_analysis()
  temp_bytes = analysis.temp_size_in_bytes if analysis is not None else 0
  return TempBlockPrefaulter(temp_bytes)
