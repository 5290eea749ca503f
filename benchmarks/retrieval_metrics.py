"""Time and peak memory of the exact retrieval metrics on random unit vectors.

  python -m benchmarks.retrieval_metrics [--images 100000] [--captions 500000] [--dim 512] [--smoke]
"""

import argparse
import platform
import sys
import time

import numpy as np

from benchmarks.common import peak_rss_bytes, print_table, write_json
from eval.retrieval_lib import retrieval_metrics


def random_unit(n: int, dim: int, rng: np.random.Generator, chunk: int = 65_536) -> np.ndarray:
  """float32 unit rows, normalised in place a chunk at a time (np.linalg.norm of the whole
  matrix would allocate a temporary as large as the matrix and dominate the peak)."""
  x = rng.standard_normal((n, dim), dtype=np.float32)
  for start in range(0, n, chunk):
    part = x[start:start + chunk]
    part /= np.linalg.norm(part, axis=1, keepdims=True)
  return x


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=100_000)
  parser.add_argument('--captions', type=int, default=500_000)
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--smoke', action='store_true', help='1,000 x 5,000, for CI')
  parser.add_argument('--out', default='benchmarks/results/retrieval_metrics.json')
  args = parser.parse_args(argv)
  if args.smoke:
    args.images, args.captions = 1_000, 5_000
  rng = np.random.default_rng(0)
  images = random_unit(args.images, args.dim, rng)
  captions = random_unit(args.captions, args.dim, rng)
  owner = np.arange(args.captions) % args.images
  start = time.perf_counter()
  metrics = retrieval_metrics(images, captions, owner)
  seconds = time.perf_counter() - start
  row = {'images': args.images, 'captions': args.captions, 'dim': args.dim,
         'seconds': round(seconds, 1), 'peak_rss_gib': round(peak_rss_bytes() / 2**30, 3),
         'inputs_gib': round((images.nbytes + captions.nbytes) / 2**30, 3),
         'text_retrieval_recall@10': round(metrics['text_retrieval_recall@10'], 6),
         'image_retrieval_recall@10': round(metrics['image_retrieval_recall@10'], 6)}
  print_table([row], list(row))
  write_json(args.out, {'results': [row], 'machine': platform.processor() or platform.machine()})
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
