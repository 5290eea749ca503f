"""Pre-faulting XLA:CPU's per-step temporary block: found, populated, results unchanged."""

import mmap
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.backends.cpu.prefault import (MIN_BLOCK_BYTES, TempBlockPrefaulter, for_compiled_step,
                               large_anonymous_mappings)
from tests.helpers import resident_bytes

linux_only = pytest.mark.skipif(sys.platform != 'linux', reason='reads /proc/self/maps')

_MAPS = """\
00400000-00401000 r-xp 00000000 08:01 123 /usr/bin/python3
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
7f0010000000-7f0010100000 rw-p 00000000 00:00 0
7f0020000000-7f0030000000 r--p 00000000 00:00 0
7f0030000000-7f0040000000 rw-p 00000000 08:01 77 /data/file.bin
7f0040000000-7f0048000000 rw-p 00000000 00:00 0 [anon:xla]
7ffd00000000-7ffd10000000 rw-p 00000000 00:00 0 [stack]
"""


def test_only_large_writable_anonymous_mappings_are_candidates():
  assert large_anonymous_mappings(_MAPS, 64 << 20) == {(0x7f0000000000, 0x10000000),
                                                       (0x7f0040000000, 0x8000000)}
  assert large_anonymous_mappings(_MAPS, 0x10000000) == {(0x7f0000000000, 0x10000000)}


def test_off_where_temporaries_are_small_or_not_wanted():
  assert not TempBlockPrefaulter(MIN_BLOCK_BYTES - 1).enabled
  assert not TempBlockPrefaulter(1 << 30, enabled=False).enabled
  off = TempBlockPrefaulter(1 << 30, enabled=False)
  off.before_dispatch()
  assert off.after_dispatch() == 0


def _private_block(size: int) -> mmap.mmap:
  return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


@linux_only
def test_a_new_block_is_populated_without_being_touched():
  """The kernel faults in the whole new mapping: resident before anything writes to it."""
  size = 256 << 20
  prefault = TempBlockPrefaulter(size, timeout_s=1.0)
  prefault.before_dispatch()
  block = _private_block(size)  # what glibc does for XLA's block, here without touching it
  before = resident_bytes()
  assert prefault.after_dispatch() == size
  assert resident_bytes() - before >= 0.95 * size
  assert block[:16] == bytes(16) and block[-16:] == bytes(16)  # zero-filled, as mmap promises
  block.close()


@linux_only
def test_next_block_is_found_when_the_last_one_is_unmapped_late():
  """The previous step's block goes a moment after its outputs are ready, and its successor
  usually takes the same address: it must not be mistaken for a block that was always there."""
  size = 256 << 20
  prefault = TempBlockPrefaulter(size, timeout_s=1.0, settle_s=1.0)
  prefault.before_dispatch()
  first = _private_block(size)
  assert prefault.after_dispatch() == size
  unmap_late = threading.Timer(0.05, first.close)  # while the next step is being dispatched
  start = time.monotonic()
  unmap_late.start()
  prefault.before_dispatch()
  assert time.monotonic() - start >= 0.04  # waited for it to go, not taken as a lasting mapping
  unmap_late.join()
  second = _private_block(size)  # where `first` was, typically
  assert prefault.after_dispatch() == size
  second.close()
  assert prefault.populated_bytes == 2 * size


@linux_only
def test_gives_up_after_steps_without_a_new_block():
  prefault = TempBlockPrefaulter(1 << 30, timeout_s=0.01, max_misses=2)
  for _ in range(2):
    prefault.before_dispatch()
    assert prefault.after_dispatch() == 0
  assert not prefault.enabled


@linux_only
def test_prefaulted_xla_step_gives_bit_identical_results():
  """An XLA computation with ~80 MB of temporaries, run with and without its block pre-faulted."""
  def chain(h, w):
    return jax.lax.fori_loop(0, 12, lambda i, h: jnp.tanh(h @ w), h).sum(axis=0)

  h = jax.random.normal(jax.random.key(0), (80_000, 256))
  w = jax.random.normal(jax.random.key(1), (256, 256)) / 16
  step = jax.jit(chain).lower(h, w).compile()
  assert step.memory_analysis().temp_size_in_bytes >= MIN_BLOCK_BYTES
  reference = np.asarray(step(h, w))
  prefault = for_compiled_step(step, wanted=True)
  prefault.timeout_s = 1.0
  result = prefault.dispatch(step, h, w)  # as the train loop calls its step
  assert prefault.populated_bytes >= step.memory_analysis().temp_size_in_bytes // 2
  np.testing.assert_array_equal(np.asarray(result), reference)
