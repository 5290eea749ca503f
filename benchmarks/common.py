"""Helpers shared by benchmark scripts: timing, the machine's matmul peak, tables and JSON."""

import json
import os
import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env() -> dict:
  """Environment of a benchmark's child process: this checkout importable, one CPU device and the
  default thread pool (what a user gets), whatever XLA_FLAGS the parent has."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  return env


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` (which must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_flops(n: int = 4096, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a jitted n x n matmul on the default device: the practical peak to compare with."""
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
  f(x).block_until_ready()
  return 2 * n ** 3 / median_seconds(lambda: f(x).block_until_ready(), repeats)


def peak_rss_bytes() -> int:
  """This process's peak resident set size."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def print_table(rows: list[dict], columns: list[str]) -> None:
  """A fixed-width table of `rows` (dicts) in `columns` order."""
  cells = [[str(row.get(c, '')) for c in columns] for row in rows]
  widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
  print('  '.join(c.ljust(w) for c, w in zip(columns, widths)))
  for r in cells:
    print('  '.join(v.ljust(w) for v, w in zip(r, widths)))


def write_json(path: str, payload: dict) -> None:
  """Writes the benchmark's results (creating the folder)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(payload, f, indent=2)
  print(f'wrote {path}')
