"""Input pipeline throughput vs what the train step consumes.

  python -m benchmarks.input_pipeline [--images 1024] [--batches 8] [--step_check] [--smoke]

Builds a webdataset shard of 256-px JPEGs, then measures decoded + augmented + tokenised examples/s
for 0, 1 and 2 grain worker processes at the `tiny` (64 px) and `b32` (224 px) transforms.
`--step_check` also times the `tiny` train step fed by this pipeline against the same step on a
device-resident batch (the goal: real-data step time <= 1.05x resident).
"""

import argparse
import os
import platform
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

from benchmarks.common import print_table, write_json
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
  return batches * t['batch'] / (time.perf_counter() - start)


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


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=1024)
  parser.add_argument('--batches', type=int, default=8)
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
  workdir = tempfile.mkdtemp()
  spec = write_corpus('wds', os.path.join(workdir, 'wds'), args.images, 'train', 256,
                      per_shard=args.images)
  source = open_source(spec, cache_dir=os.path.join(workdir, 'index'))
  rows = []
  for name in TRANSFORMS:
    for workers in ((0,) if args.smoke else (0, 1, 2)):
      rate = pipeline_rate(source, name, workers, args.batches)
      rows.append({'transform': name, 'workers': workers, 'examples_per_s': round(rate, 1)})
  print_table(rows, list(rows[0]))
  result = {'results': rows, 'machine': platform.processor() or platform.machine()}
  if args.step_check:
    check = step_check(spec, args.steps)
    print_table([check], list(check))
    result['step_check'] = check
  write_json(args.out, result)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
