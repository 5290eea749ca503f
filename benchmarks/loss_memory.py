"""Time and peak memory of each contrastive loss's forward + backward as the global batch grows.

  python -m benchmarks.loss_memory [--batches 4096,16384,65536,131072] [--losses ...] [--smoke]

Each point runs in a fresh process with 8 simulated CPU devices: unit embeddings [B, d] (d = 512)
sharded over the devices, the loss and its gradients with respect to both embeddings and the
scale, compiled ahead of time. The process's peak RSS is read after the timed runs. A point
whose XLA memory estimate (8 x one device's arguments + outputs + temporaries) exceeds the memory
limit is not run: the table says how much it would need.
"""

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_LOSSES = ('softmax/local_rows', 'softmax/tiled', 'sigmoid/ring')
GIB = 2 ** 30


def measure_point(loss: str, batch: int, dim: int, tile: int, limit_bytes: int) -> dict:
  """Runs in the child: compile, estimate, and (if it fits) time one loss at one batch."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from jax.sharding import NamedSharding, PartitionSpec as P

  from benchmarks.common import peak_rss_bytes
  from pretrain.losses import make_loss
  from pretrain.parallel.sharding import BATCH_AXES, make_mesh

  name, impl = loss.split('/')
  mesh = make_mesh({'data': -1, 'fsdp': 1})
  cfg = ml_collections.ConfigDict(dict(name=name, impl=impl, tile=tile, label_smoothing=0.0))
  loss_fn = make_loss(mesh, BATCH_AXES, cfg)
  extra = (jnp.float32(-10.0),) if name == 'sigmoid' else ()
  grad_fn = jax.jit(jax.value_and_grad(lambda i, t, s, *b: loss_fn(i, t, s, *b)[0],
                                       argnums=(0, 1, 2)))
  rows = NamedSharding(mesh, P(BATCH_AXES))

  @jax.jit
  def embeddings(key):
    x = jax.random.normal(key, (2, batch, dim), jnp.float32)
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return jax.lax.with_sharding_constraint(x[0], rows), jax.lax.with_sharding_constraint(x[1], rows)

  shape = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)
  compiled = grad_fn.lower(shape, shape, jnp.float32(10.0), *extra).compile()
  mem = compiled.memory_analysis()
  per_device = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
  row = {'loss': loss, 'batch': batch, 'per_device_batch': batch // jax.device_count(),
         'xla_estimate_gib': round(jax.device_count() * per_device / GIB, 2)}
  if jax.device_count() * per_device > limit_bytes:
    row.update(status='does not fit', seconds='', peak_rss_gib='')
    return row
  img, txt = embeddings(jax.random.key(0))
  times = []
  while len(times) < 3 and sum(times) < 20:
    start = time.perf_counter()
    jax.block_until_ready(compiled(img, txt, jnp.float32(10.0), *extra))
    times.append(time.perf_counter() - start)
  row.update(status='ok', seconds=round(sorted(times)[len(times) // 2], 3), runs=len(times),
             peak_rss_gib=round(peak_rss_bytes() / GIB, 2))
  return row


def run_point(loss: str, batch: int, args) -> dict:
  """One point in a fresh process with 8 simulated devices (its own peak RSS)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cmd = [sys.executable, '-m', 'benchmarks.loss_memory', '--point', f'{loss}@{batch}',
         '--dim', str(args.dim), '--tile', str(args.tile), '--limit_gib', str(args.limit_gib)]
  result = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if result.returncode != 0:
    tail = (result.stderr.strip().splitlines() or ['killed'])[-1]
    return {'loss': loss, 'batch': batch, 'status': f'failed (exit {result.returncode}): {tail}'}
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
  """Runs every (loss, batch) point and writes the table as JSON."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batches', default='4096,16384,65536,131072')
  parser.add_argument('--losses', default=','.join(DEFAULT_LOSSES))
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--tile', type=int, default=1024)
  parser.add_argument('--limit_gib', type=float, default=22.0, help='skip points estimated above')
  parser.add_argument('--smoke', action='store_true', help='CI sizes: B=256, d=32, tile 16')
  parser.add_argument('--point', help=argparse.SUPPRESS)  # child mode: LOSS@BATCH
  parser.add_argument('--out', default='benchmarks/results/loss_memory.json')
  args = parser.parse_args(argv)
  if args.point:
    loss, batch = args.point.split('@')
    row = measure_point(loss, int(batch), args.dim, args.tile, int(args.limit_gib * GIB))
    print(json.dumps(row))
    return 0
  if args.smoke:
    args.batches, args.dim, args.tile = '256', 32, 16
  from benchmarks.common import print_table, write_json
  rows = []
  for batch in (int(b) for b in args.batches.split(',')):
    for loss in args.losses.split(','):
      rows.append(run_point(loss, batch, args))
      print(json.dumps(rows[-1]), flush=True)
  print_table(rows, ['loss', 'batch', 'per_device_batch', 'status', 'seconds', 'peak_rss_gib',
                     'xla_estimate_gib'])
  write_json(args.out, {'dim': args.dim, 'tile': args.tile, 'devices': 8,
                        'limit_gib': args.limit_gib, 'results': rows})
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
