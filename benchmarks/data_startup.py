"""One trainer-like start-up, measured from inside a fresh process (run by benchmarks.data_scale).

  python -m benchmarks.data_startup --spec SPEC [--index_dir DIR] [--examples 4096] [--batch 256]

Imports what a trainer imports, opens the source (reading or building its index), builds
data.pipeline.train_dataset and takes the first batch; then times `--examples` decoded, augmented
and tokenised examples. Prints one JSON line: wall-clock instants (time.time(), so the parent can
subtract its own spawn instant), the index's RSS (VmRSS after opening minus before, after a
gc.collect() each) and examples/s.
"""

import time

PROCESS_START = time.time()  # pylint: disable=wrong-import-position

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import ml_collections  # noqa: E402

from data import storage, wds  # noqa: E402  (imported before the baseline: code is not index)
from data.pipeline import train_dataset  # noqa: E402
from data.sources import open_source  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402

if importlib.util.find_spec('data.index') is not None:
  import data.index  # noqa: E402,F401  pylint: disable=unused-import


def rss_bytes() -> int:
  """This process's resident set size now (VmRSS)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  raise RuntimeError('no VmRSS in /proc/self/status')


def data_cfg() -> ml_collections.ConfigDict:
  """The pipeline settings of the `tiny` transform (64 px), in-process (no grain workers)."""
  return ml_collections.ConfigDict(dict(resize=72, flip=True, num_threads=2, prefetch=4,
                                        workers=0, on_bad_record='skip'))


def warm_client(spec: str) -> None:
  """Reads a byte of the first shard, so the storage client (gcsfs: its modules, session and
  event loop, tens of MB) is in RSS before the baseline: that cost does not grow with the corpus."""
  first = wds.expand_pattern(spec.partition(':')[2])[0]
  with storage.open_reader(first) as f:
    f.read(1)


def measure(spec: str, index_dir: str | None, examples: int, batch: int) -> dict:
  """Opens the source, takes the first batch, then times `examples` examples."""
  warm_client(spec)
  imported = time.time()
  gc.collect()
  before = rss_bytes()
  # The index folder: `cache_dir` of the per-shard JSON caches before the index step existed,
  # `index_dir` (read first; cache_dir only a fallback) with it.
  where = {'cache_dir': index_dir}
  if 'index_dir' in inspect.signature(open_source).parameters:
    where['index_dir'] = index_dir
  source = open_source(spec, **where)
  opened = time.time()
  gc.collect()
  after = rss_bytes()
  it = iter(train_dataset(source, get_tokenizer('bytes'), data_cfg(), image_size=64,
                          context_length=32, global_batch=batch, seed=0, process_index=0,
                          process_count=1))
  first = next(it)
  first_batch = time.time()
  assert first['image'].shape == (batch, 64, 64, 3), first['image'].shape
  batches = max(1, examples // batch)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch / (time.perf_counter() - start)
  it.close()
  return {'process_start': PROCESS_START, 'imported': imported, 'opened': opened,
          'first_batch': first_batch, 'samples': len(source), 'rss_before': before,
          'rss_after': after, 'examples_per_s': rate}


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--spec', required=True)
  parser.add_argument('--index_dir', default=None)
  parser.add_argument('--examples', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=256)
  args = parser.parse_args(argv)
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  print(json.dumps(measure(args.spec, args.index_dir, args.examples, args.batch)), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
