"""Cost of touching a freshly allocated block of host memory, by how long it lay free before.

  python -m benchmarks.refault [--gb 2.6] [--waits 0,0.5,1,2,4,8] [--repeats 3] [--out FILE]
      [--smoke]

XLA:CPU frees a train step's temporary block (2.6 GB on `b32`) when the step ends and allocates it
afresh at the next one, so every step touches that much fresh memory (benchmarks/README.md, fourth
and fifth passes). This measures what that costs here, under the trainer's malloc: glibc malloc,
memset, free, then a wait before the next round. On a virtual machine whose kernel reports free
memory to the hypervisor (Linux free page reporting), memory that lay free long enough to be
reported and discarded by the host costs several times more to touch again; the table shows how
much was reported during each wait (`reported_mb`, where the kernel exposes the counter).
"""

from pretrain.backends.cpu import host_memory

if __name__ == '__main__':  # the malloc the trainer runs with
  host_memory.restart_with_huge_page_malloc()

import argparse
import ctypes
import os
import platform
import resource
import statistics
import sys
import time

from benchmarks.common import print_table, write_json

_REPORTING = '/sys/module/page_reporting/parameters'


def _libc():
  libc = ctypes.CDLL(None)  # the process itself, which links the C library (and its malloc)
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
  return libc


def reported_kib() -> int | None:
  """KiB of free memory this kernel has reported to its hypervisor so far; None if it does not."""
  try:
    with open(os.path.join(_REPORTING, 'reported_kib')) as f:
      return int(f.read())
  except (OSError, ValueError):
    return None


def touch_fresh_block(libc, nbytes: int) -> dict:
  """malloc + memset + free of one block: wall and kernel seconds, minor faults of the touch."""
  before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  pointer = libc.malloc(nbytes)
  if not pointer:
    raise MemoryError(f'malloc({nbytes}) failed')
  ctypes.memset(pointer, 1, nbytes)
  seconds = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_SELF)
  libc.free(pointer)
  return {'touch_s': seconds, 'kernel_s': after.ru_stime - before.ru_stime,
          'faults': after.ru_minflt - before.ru_minflt}


def measure(nbytes: int, waits: list[float], repeats: int) -> list[dict]:
  """One row per wait: medians over `repeats` rounds of wait-then-touch."""
  libc = _libc()
  touch_fresh_block(libc, nbytes)  # the first touch of never-used memory, excluded
  rows = []
  for wait in waits:
    rounds, reported = [], []
    for _ in range(repeats):
      kib_before = reported_kib()
      time.sleep(wait)
      kib_after = reported_kib()
      rounds.append(touch_fresh_block(libc, nbytes))
      if kib_before is not None and kib_after is not None:
        reported.append((kib_after - kib_before) / 1024)
    touch_s = statistics.median(r['touch_s'] for r in rounds)
    rows.append({'block_gb': round(nbytes / 1e9, 3), 'free_for_s': wait,
                 'touch_s': round(touch_s, 3),
                 'kernel_s': round(statistics.median(r['kernel_s'] for r in rounds), 3),
                 'faults': int(statistics.median(r['faults'] for r in rounds)),
                 'gb_per_s': round(nbytes / touch_s / 1e9, 2),
                 'reported_mb': round(statistics.median(reported)) if reported else 'n/a',
                 'glibc_tunables': os.environ.get('GLIBC_TUNABLES') or 'none'})
  return rows


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--gb', type=float, default=2.6, help='block size (b32 step temporaries)')
  parser.add_argument('--waits', default='0,0.5,1,2,4,8', help='seconds free before each touch')
  parser.add_argument('--repeats', type=int, default=3, help='rounds per wait (median reported)')
  parser.add_argument('--out', default='benchmarks/results/refault.json', help='JSON output')
  parser.add_argument('--smoke', action='store_true', help='tiny sizes, for CI')
  args = parser.parse_args(argv)
  gb, waits, repeats = args.gb, [float(w) for w in args.waits.split(',')], args.repeats
  if args.smoke:
    gb, waits, repeats = 0.064, [0.0, 0.1], 1
  rows = measure(int(gb * 1e9), waits, repeats)
  print_table(rows, list(rows[0]))
  write_json(args.out, {'results': rows, 'machine': platform.processor() or platform.machine(),
                        'free_page_reporting': reported_kib() is not None})
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
