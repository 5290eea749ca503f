"""Checks only a GPU can make: cuDNN attention against XLA's, and a bit-identical repeated step.

  python -m benchmarks.gpu_checks attention [--out FILE]      # cuDNN vs XLA attention (bf16)
  python -m benchmarks.gpu_checks determinism [--out FILE]    # the same step twice, bit for bit

`attention`: jax.nn.dot_product_attention with implementation='cudnn' against 'xla' on bf16 inputs
at the towers' shapes (ViT-B/16 197 tokens, L/14-336 577 tokens; CLIP's causal text with padding),
outputs and input gradients, each compared with an fp32 XLA reference: cuDNN passes when its error
is within TOLERANCE_FACTOR of XLA's own bf16 error (plus a small floor). With `model.attention` in
the config (the fused-attention work), also CLIP B/32's bf16 loss and gradients with
`model.attention=cudnn` against `xla`.
`determinism`: CLIP B/32's train step run twice from the same state and batch; reports whether the
new parameters are bit-identical. Run it with and without `--xla_gpu_deterministic_ops=true` in
XLA_FLAGS (benchmarks/gpu_session.sh does) or with `deterministic=True` where the config has it.
Exit status 1 when a check fails; results go to JSON either way.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import write_json

TOLERANCE_FACTOR = 2.0
FLOOR = 2e-3
# (name, batch, tokens, heads, head dim, causal, padded): the towers' attention shapes.
SHAPES = (('vit_b16', 8, 197, 12, 64, False, False), ('vit_l14_336', 4, 577, 16, 64, False, False),
          ('text_b', 16, 77, 8, 64, True, True))


def _attention(implementation: str, dtype, causal: bool, lengths):
  def loss_and_out(q, k, v):
    out = jax.nn.dot_product_attention(
        q.astype(dtype), k.astype(dtype), v.astype(dtype), is_causal=causal,
        key_value_seq_lengths=lengths, implementation=implementation)
    return jnp.sum(out.astype(jnp.float32) ** 2), out.astype(jnp.float32)
  return jax.jit(jax.value_and_grad(loss_and_out, argnums=(0, 1, 2), has_aux=True))


def attention_rows() -> list[dict]:
  """cuDNN's and XLA's bf16 errors against an fp32 reference, per shape."""
  rows = []
  for name, b, t, h, d, causal, padded in SHAPES:
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (b, t, h, d), jnp.float32) for key in keys)
    lengths = jnp.asarray(np.random.default_rng(0).integers(t // 4, t + 1, b), jnp.int32) \
        if padded else None
    (_, ref), ref_grads = _attention('xla', jnp.float32, causal, lengths)(q, k, v)
    errors = {}
    for impl in ('xla',) if SMOKE else ('xla', 'cudnn'):
      (_, out), grads = _attention(impl, jnp.bfloat16, causal, lengths)(q, k, v)
      valid = (jnp.arange(t)[None, :] < lengths[:, None])[:, :, None, None] if padded else 1.0
      out_err = float(jnp.max(jnp.abs((out - ref) * valid)))
      grad_err = max(float(jnp.max(jnp.abs((g.astype(jnp.float32) - r) * valid))
                         / (float(jnp.max(jnp.abs(r))) + 1e-6))
                     for g, r in zip(grads, ref_grads))
      errors[impl] = (out_err, grad_err)
    errors.setdefault('cudnn', errors['xla'])  # smoke: XLA against itself
    ok = all(errors['cudnn'][i] <= TOLERANCE_FACTOR * errors['xla'][i] + FLOOR for i in (0, 1))
    rows.append({'check': f'attention {name}', 'shape': f'{b}x{t}x{h}x{d}', 'causal': causal,
                 'padded': padded, 'xla_bf16_out_err': errors['xla'][0],
                 'cudnn_out_err': errors['cudnn'][0], 'xla_bf16_grad_rel_err': errors['xla'][1],
                 'cudnn_grad_rel_err': errors['cudnn'][1], 'ok': ok})
  return rows


SMOKE = False  # --smoke: CPU dry run at demo sizes, XLA attention only.


def _b32(batch_per_chip: int, **model):
  """CLIP B/32 (configs/clip.py) in bf16 on the local devices, its step builder, state, batch."""
  from benchmarks.train_throughput import synthetic_batch
  from pretrain.config.cli import load_config_file
  from pretrain.parallel import sharding
  from pretrain.step.optim import make_optimizer
  from pretrain.step.train_step import StepBuilder
  config = load_config_file('configs/clip.py:b32')
  config.batch_size = batch_per_chip * jax.device_count()
  config.mesh.update(dict(data=-1, fsdp=1))
  config.model.update(dict(dtype='bfloat16', **model))
  if SMOKE:
    config.model.update(dict(variant='demo', image_size=32, vocab_size=64, context_length=8))
  if 'deterministic' in config:
    config.deterministic = True
  mesh = sharding.make_mesh(dict(config.mesh))
  tx, schedule = make_optimizer(config.optim, 10_000)
  builder = StepBuilder(config, mesh, tx, schedule)
  return builder, builder.init_state(), synthetic_batch(config, mesh)


def model_attention_rows() -> list[dict]:
  """CLIP B/32 bf16 loss and gradients, model.attention=cudnn against xla (if the field exists)."""
  from configs.common import base_config
  if 'attention' not in base_config().model:
    return [{'check': 'model attention cudnn vs xla', 'ok': 'n/a (no model.attention field)'}]
  results = {}
  for name, impl in (('xla', 'xla'), ('cudnn', 'xla' if SMOKE else 'cudnn')):
    builder, state, batch = _b32(16, attention=impl)
    (loss, _), grads = jax.jit(builder.loss_and_grads)(state.params, batch)
    results[name] = float(loss), np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
  (loss_x, g_x), (loss_c, g_c) = results['xla'], results['cudnn']
  cosine = float(g_x @ g_c / (np.linalg.norm(g_x) * np.linalg.norm(g_c)))
  return [{'check': 'model attention cudnn vs xla', 'loss_xla': loss_x, 'loss_cudnn': loss_c,
           'grad_cosine': cosine, 'ok': abs(loss_x - loss_c) <= 1e-2 * abs(loss_x) and
           cosine >= 0.999}]


def determinism_rows() -> list[dict]:
  """The same compiled step twice from the same state and batch: bit-identical parameters?"""
  import os
  builder, state, batch = _b32(64)
  step = builder.jit_step()
  first, _ = step(state, batch)
  second, _ = step(builder.init_state(), batch)  # the same seed: the same state (it was donated)
  same = all(bool(jnp.array_equal(a, b)) for a, b in
             zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)))
  return [{'check': 'step twice, bit-identical params', 'identical': same,
           'xla_flags': os.environ.get('XLA_FLAGS', ''),
           'config_deterministic': 'deterministic' in builder.config, 'ok': True}]


def main(argv: list[str]) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('check', choices=('attention', 'determinism'))
  parser.add_argument('--smoke', action='store_true', help='CPU dry run: demo sizes, XLA only')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  global SMOKE
  SMOKE = args.smoke
  rows = (attention_rows() + model_attention_rows() if args.check == 'attention'
          else determinism_rows())
  for row in rows:
    print(row, flush=True)
  write_json(args.out or f'benchmarks/results/gpu_checks_{args.check}.json',
             {'results': rows, 'device': jax.devices()[0].device_kind})
  return 0 if all(row['ok'] is True or str(row['ok']).startswith('n/a') for row in rows) else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
