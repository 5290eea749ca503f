"""Input pipeline throughput vs what the train step consumes.

  python -m benchmarks.input_pipeline [--images 1024] [--batches 8] [--source local,gs,s3]
      [--step_check] [--smoke]

Builds a webdataset shard of 256-px JPEGs, then measures decoded + augmented + tokenised examples/s
for 0, 1 and 2 grain worker processes at the `tiny` (64 px) and `b32` (224 px) transforms.
`--source gs` / `s3` writes the shard (and its index cache) to a bucket on a GCS / S3 API emulator
this script starts on 127.0.0.1 (tests/emulators.py's servers): no network is crossed, so the
difference to `local` is the clients' per-request overhead, not bandwidth or latency of a cloud.
`--step_check` also times the `tiny` train step fed by this pipeline against the same step on a
device-resident batch (the goal: real-data step time <= 1.05x resident).
"""

import argparse
import atexit
import os
import platform
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

from benchmarks.common import print_table, write_json
from data import storage
from data.make_corpus import write_corpus
from data.pipeline import train_dataset
from data.sources import open_source
from data.tokenizer import get_tokenizer

TRANSFORMS = {'tiny': dict(image_size=64, resize=72, context=32, batch=256),
              'b32': dict(image_size=224, resize=256, context=77, batch=32)}


def data_cfg(workers: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(resize=0, flip=True, num_threads=2, prefetch=4,
                                        workers=workers, on_bad_record='skip'))


def pipeline_rate(source, name: str, workers: int, batches: int) -> float:
  """Examples/s of the pipeline alone, after the first batch (worker start-up excluded)."""
  t = TRANSFORMS[name]
  cfg = data_cfg(workers)
  cfg.resize = t['resize']
  ds = train_dataset(source, get_tokenizer('bytes'), cfg, image_size=t['image_size'],
                     context_length=t['context'], global_batch=t['batch'], seed=0,
                     process_index=0, process_count=1)
  it = iter(ds)
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * t['batch'] / (time.perf_counter() - start)
  it.close()  # its prefetch threads and workers stop before the next row (or the emulator) starts
  return rate


def step_check(spec: str, steps: int) -> dict:
  """tiny train step: median seconds fed by the wds pipeline vs on a resident batch."""
  from benchmarks.train_throughput import bench_config, synthetic_batch
  from pretrain.parallel import sharding
  from pretrain.step.optim import make_optimizer
  from pretrain.step.train_step import StepBuilder
  config = bench_config('tiny', False, [])
  config.data.update(dict(resize=72, flip=True))
  mesh = sharding.make_mesh(dict(config.mesh))
  tx, schedule = make_optimizer(config.optim, 10_000)
  builder = StepBuilder(config, mesh, tx, schedule)
  state, step = builder.init_state(), builder.jit_step()
  resident = synthetic_batch(config, mesh)
  source = open_source(spec)
  it = iter(train_dataset(source, get_tokenizer('bytes'), config.data, image_size=64,
                          context_length=32, global_batch=256, seed=0, process_index=0,
                          process_count=1))

  def timed(get_batch):
    nonlocal state
    times = []
    for _ in range(steps + 1):
      start = time.perf_counter()
      state, metrics = step(state, get_batch())
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))

  resident_s = timed(lambda: resident)
  real_s = timed(lambda: sharding.global_batch(next(it), mesh))
  return {'resident_step_s': round(resident_s, 3), 'real_data_step_s': round(real_s, 3),
          'ratio': round(real_s / resident_s, 3)}


def data_root(source: str, scratch: str) -> str:
  """A folder for the corpus: local, or a bucket on an emulator started here for the process."""
  if source == 'local':
    return os.path.join(scratch, 'local')
  # The emulators' one definition; this script runs from a checkout, where tests/ is a package.
  from tests.emulators import Emulator  # pylint: disable=import-outside-toplevel
  emulator = Emulator(source, os.path.join(scratch, f'{source}_objects')).start()
  # Stopped at exit, after the thread pools have joined: a closed grain iterator's last reads
  # still run, and would retry against a stopped server for a minute.
  atexit.register(emulator.stop)
  os.environ.update(emulator.env)  # before the first client is made; grain's workers inherit it
  return storage.join(emulator.bucket('bench-data'), 'corpus')


def source_rows(source_kind: str, scratch: str, args) -> list[dict]:
  """The examples/s rows of one storage kind."""
  rows, root = [], data_root(source_kind, scratch)
  spec = write_corpus('wds', storage.join(root, 'wds'), args.images, 'train', 256,
                      per_shard=args.images)
  source = open_source(spec, cache_dir=storage.join(root, 'index'))
  for name in TRANSFORMS:
    for workers in ((0,) if args.smoke else (0, 1, 2)):
      rate = pipeline_rate(source, name, workers, args.batches)
      rows.append({'source': source_kind, 'transform': name, 'workers': workers,
                   'examples_per_s': round(rate, 1)})
  return rows


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=1024)
  parser.add_argument('--batches', type=int, default=8)
  parser.add_argument('--source', default='local',
                      help='comma-separated storage kinds to read from: local, gs, s3')
  parser.add_argument('--step_check', action='store_true')
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--smoke', action='store_true', help='tiny sizes, for CI')
  parser.add_argument('--out', default='benchmarks/results/input_pipeline.json')
  args = parser.parse_args(argv)
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
  if args.smoke:
    args.images, args.batches = 64, 1
    for t in TRANSFORMS.values():
      t['batch'] = 16
  kinds = args.source.split(',')
  unknown = set(kinds) - {'local', 'gs', 's3'}
  if unknown:
    parser.error(f'--source: unknown {sorted(unknown)}; use local, gs or s3')
  scratch = tempfile.mkdtemp()
  rows = [row for kind in kinds for row in source_rows(kind, scratch, args)]
  print_table(rows, list(rows[0]))
  result = {'results': rows, 'machine': platform.processor() or platform.machine()}
  if args.step_check:
    spec = write_corpus('wds', os.path.join(scratch, 'step'), args.images, 'train', 256,
                        per_shard=args.images)
    check = step_check(spec, args.steps)
    print_table([check], list(check))
    result['step_check'] = check
  write_json(args.out, result)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
