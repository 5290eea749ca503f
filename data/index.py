"""The one-time index step of webdataset shards, so that training start-up never walks a tar.

  python -m data.index SPEC [--out DIR] [--workers N]

SPEC is a wds: spec (or its bare shard pattern). Writes one small index file per shard
(data/tarindex.py) beside the shards, or into DIR (local or gs:// / s3://; then train with
`data.index_dir=DIR`). Resumable: a shard whose index file matches its current version stamp is
skipped, so an interrupted run continues and a replaced shard is indexed again. Shards are indexed
by a pool of N threads (bucket reads wait on the network). Prints progress lines and, at the end,
the corpus totals.
"""

import argparse
import sys
import time

from data import storage
from data.errors import ConfigError
from data.sources import SOURCE_KINDS, parse_spec
from data.tarindex import BESIDE, index_shards
from data.wds import expand_pattern


def shard_pattern(spec: str) -> str:
  """The shard pattern of a `wds:` spec (or of a bare pattern)."""
  kind, arg, _ = parse_spec(spec)
  if kind == 'wds':
    return arg
  if kind in SOURCE_KINDS:
    raise ConfigError(f'{spec!r}: only wds: shards are indexed (a {kind}: source needs no index)')
  return spec


def run(spec: str, out: str | None = None, workers: int = 16) -> dict:
  """Indexes every shard of the spec that has no current index; returns the corpus totals."""
  if workers < 1:
    raise ConfigError(f'--workers {workers}: need at least 1')
  pattern = shard_pattern(spec)
  storage.check_reachable(pattern, 'wds data path')
  if out:
    storage.check_reachable(out, 'index --out')
  shards = expand_pattern(pattern)
  if not shards:
    raise ConfigError(f'wds data path {pattern} matches no shard')
  versions = storage.version_stamps(shards)
  present = [k for k, v in enumerate(versions) if v is not None]
  folder = out or BESIDE
  start = time.monotonic()
  print(f'index: {len(shards)} shards of {pattern}, {len(shards) - len(present)} missing; index '
        f'files {"in " + out if out else "beside the shards"}', flush=True)
  indexes, built = index_shards([shards[k] for k in present], [versions[k] for k in present],
                                [folder], folder, workers)
  return {'shards': len(shards), 'samples': sum(len(index.rows) for index in indexes),
          'indexed': built, 'skipped': len(present) - built,
          'truncated': sum(index.truncated for index in indexes),
          'missing': len(shards) - len(present), 'seconds': time.monotonic() - start}


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('spec', help='wds:PATTERN (brace ranges and globs; local, gs:// or s3://)')
  parser.add_argument('--out', default=None,
                      help='folder for the index files (default: beside the shards)')
  parser.add_argument('--workers', type=int, default=16, help='shards indexed at once')
  args = parser.parse_args(argv)
  try:
    totals = run(args.spec, args.out, args.workers)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'corpus: {totals["samples"]:,} samples in {totals["shards"]} shards; '
        f'{totals["indexed"]} indexed now, {totals["skipped"]} already indexed; bad shards: '
        f'{totals["truncated"]} truncated, {totals["missing"]} missing; '
        f'{totals["seconds"]:.1f} s', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
