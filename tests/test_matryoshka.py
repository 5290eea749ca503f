"""Matryoshka training: the loss is the weighted sum of the prefix losses, for every implementation,
mesh and accum_steps; a single full-width prefix is the plain loss bit for bit; config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data.errors import ConfigError
from pretrain.config.rules import check_fields, check_matryoshka
from pretrain.losses import make_loss
from pretrain.losses.sigmoid import sigmoid_reference
from pretrain.losses.softmax import softmax_reference
from tests.helpers import loss_and_grads, max_tree_diff, mesh, random_batch, step_builder, \
    tiny_config

AXES = ('data', 'fsdp')
# (loss.name, loss.impl, tile): every implementation, the ring ones with several tiles per block.
IMPLS = [('softmax', 'local_rows', 1024), ('softmax', 'tiled', 3), ('sigmoid', 'ring', 3)]


def loss_cfg(name, impl, tile, dims=(), weights=()):
  return ml_collections.ConfigDict(dict(
      name=name, impl=impl, tile=tile, label_smoothing=0.1 if name == 'softmax' else 0.0,
      matryoshka_dims=dims, matryoshka_weights=weights, matryoshka_per_prefix_temperature=False))


def pairs(n=32, d=16):
  """Correlated unit image/text rows, so accuracies are neither 0 nor 1."""
  k1, k2 = jax.random.split(jax.random.key(7))
  img = jax.random.normal(k1, (n, d))
  txt = jax.random.normal(k2, (n, d)) + 0.7 * img
  unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
  return unit(img), unit(txt)


def numpy_prefix(x, k):
  """Truncate to k dims and re-normalise, in numpy."""
  x = np.asarray(x, np.float64)[:, :k]
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_sum(name, img, txt, scales, biases, widths, weights):
  """sum_k w_k * (single-device reference loss on the numpy-renormalised prefixes)."""
  total, parts = 0.0, {}
  for i, (k, w) in enumerate(zip(widths, weights)):
    i_k, t_k = (jnp.asarray(numpy_prefix(x, k), jnp.float32) for x in (img, txt))
    if name == 'softmax':
      loss, metrics = softmax_reference(i_k, t_k, scales[i], 0.1)
    else:
      loss, metrics = sigmoid_reference(i_k, t_k, scales[i], biases[i])
    total += w * float(loss)
    parts[k] = (float(loss), metrics)
  return total, parts


@pytest.mark.parametrize('shape, per_prefix', [((1, 1), False), ((8, 1), True), ((4, 2), False)])
@pytest.mark.parametrize('name, impl, tile', IMPLS)
def test_loss_is_the_weighted_sum_of_prefix_losses(shape, name, impl, tile, per_prefix):
  img, txt = pairs()
  # 16 is not listed: the full width joins with weight 1.
  loss_fn = make_loss(mesh(*shape), AXES, loss_cfg(name, impl, tile, (4, 8), (0.5, 2.0)), 16)
  widths, weights = (4, 8, 16), (0.5, 2.0, 1.0)
  scales = np.array([5.0, 8.0, 10.0] if per_prefix else [10.0] * 3, np.float32)
  biases = np.array([-3.0, -5.0, -10.0] if per_prefix else [-10.0] * 3, np.float32)
  args = (jnp.asarray(scales) if per_prefix else jnp.float32(10.0),)
  if name == 'sigmoid':
    args += (jnp.asarray(biases) if per_prefix else jnp.float32(-10.0),)
  loss, metrics = jax.jit(loss_fn)(img, txt, *args)
  expected, parts = reference_sum(name, img, txt, scales, biases, widths, weights)
  assert abs(float(loss) - expected) <= 2e-5 * max(1.0, abs(expected))
  for k in widths:
    assert abs(float(metrics[f'loss@{k}']) - parts[k][0]) <= 2e-5 * max(1.0, parts[k][0])
    suffix = '' if k == 16 else f'@{k}'
    for key in ('acc_i2t', 'acc_t2i'):
      assert float(metrics[key + suffix]) == float(parts[k][1][key]), (k, key)
  assert 0 < float(metrics['acc_i2t@4']) < 1


@pytest.mark.parametrize('name, impl, tile', IMPLS)
def test_gradients_equal_the_weighted_sum_of_prefix_gradients(name, impl, tile):
  img, txt = pairs()
  loss_fn = make_loss(mesh(8, 1), AXES, loss_cfg(name, impl, tile, (4, 16), (3.0, 0.5)), 16)
  extra = (jnp.float32(-10.0),) if name == 'sigmoid' else ()

  def reference(i, t, s, *b):
    total = 0.0
    for k, w in ((4, 3.0), (16, 0.5)):
      # The full width is the unit embedding itself (the towers normalised it), not re-normalised.
      pi, pt = ((x[:, :k] / jnp.linalg.norm(x[:, :k], axis=1, keepdims=True)) if k < 16 else x
                for x in (i, t))
      ref = (softmax_reference(pi, pt, s, 0.1) if name == 'softmax'
             else sigmoid_reference(pi, pt, s, *b))
      total += w * ref[0]
    return total

  argnums = tuple(range(3 + len(extra)))
  grads = jax.jit(jax.grad(lambda *a: loss_fn(*a)[0], argnums))(img, txt, jnp.float32(10.0), *extra)
  expected = jax.grad(reference, argnums)(img, txt, jnp.float32(10.0), *extra)
  for g, e in zip(grads, expected):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize('name, impl, tile', IMPLS)
def test_single_full_width_prefix_is_the_plain_loss_bit_for_bit(name, impl, tile):
  img, txt = pairs()
  the_mesh = mesh(4, 2)
  extra = (jnp.float32(-10.0),) if name == 'sigmoid' else ()
  argnums = tuple(range(3 + len(extra)))
  results = []
  for dims in ((), (16,)):
    loss_fn = make_loss(the_mesh, AXES, loss_cfg(name, impl, tile, dims, (1.0,) if dims else ()), 16)
    results.append(jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a), argnums, has_aux=True))(
        img, txt, jnp.float32(10.0), *extra))
  (plain, plain_metrics), plain_grads = results[0]
  (mrl, mrl_metrics), mrl_grads = results[1]
  assert np.asarray(plain).tobytes() == np.asarray(mrl).tobytes()
  assert np.asarray(mrl_metrics['loss@16']).tobytes() == np.asarray(plain).tobytes()
  for g, h in zip(plain_grads, mrl_grads):
    assert np.array_equal(np.asarray(g), np.asarray(h))
  assert {k: float(v) for k, v in plain_metrics.items()} == {
      k: float(v) for k, v in mrl_metrics.items() if k != 'loss@16'}


def small_config():
  """A one-block, 32-wide model: these tests check the loss wiring, not the towers."""
  config = tiny_config()
  config.model.variant = 'custom'
  config.model.custom = ml_collections.ConfigDict(dict(
      patch=8, image_width=32, image_depth=1, image_heads=2, image_mlp=64, text_width=32,
      text_depth=1, text_heads=2, text_mlp=64, embed_dim=32))
  return config


def test_train_step_with_full_width_prefix_is_the_plain_step_bit_for_bit():
  config = small_config()
  batch = random_batch(config, config.batch_size)
  plain = loss_and_grads(config, mesh(8, 1), batch)
  config.loss.matryoshka_dims = (32,)  # the full embedding width
  mrl = loss_and_grads(config, mesh(8, 1), batch)
  assert plain[0] == mrl[0] and max_tree_diff(plain[2], mrl[2]) == 0.0


@pytest.mark.parametrize('loss_name', ['softmax', 'sigmoid'])
def test_gradient_caching_gives_the_weighted_prefix_sum(loss_name):
  """accum_steps=2 (grad_cache) against the prefix losses of the model's own embeddings."""
  config = small_config()
  config.batch_size = 32
  config.loss.update(name=loss_name, impl='auto', matryoshka_dims=(8, 16),
                     matryoshka_weights=(0.5, 2.0), matryoshka_per_prefix_temperature=True)
  the_mesh = mesh(4, 2)
  batch = random_batch(config, 32)
  config.accum_steps = 2
  builder = step_builder(config, the_mesh)
  params = builder.init_state().params
  cached = loss_and_grads(config, the_mesh, batch, params)
  img, txt = jax.jit(builder.embed)(params, batch['image'], batch['text'])
  n = 2  # narrower prefixes, each with its own temperature (and bias)
  scales = [float(np.exp(params['prefix_log_logit_scale'][i])) for i in range(n)]
  scales.append(float(np.exp(params['log_logit_scale'])))
  biases = ([float(params['prefix_logit_bias'][i]) for i in range(n)] + [float(params['logit_bias'])]
            if loss_name == 'sigmoid' else [None] * 3)
  expected = 0.0
  for k, w, s, b in zip((8, 16, 32), (0.5, 2.0, 1.0), scales, biases):
    i_k, t_k = (jnp.asarray(numpy_prefix(x, k), jnp.float32) for x in (img, txt))
    ref = softmax_reference(i_k, t_k, s) if loss_name == 'softmax' else sigmoid_reference(i_k, t_k, s, b)
    assert abs(float(cached[1][f'loss@{k}']) - float(ref[0])) <= 1e-4 * max(1.0, float(ref[0]))
    expected += w * float(ref[0])
  assert abs(cached[0] - expected) <= 1e-4 * max(1.0, expected)
  assert float(np.max(np.abs(cached[2]['prefix_log_logit_scale']))) > 0  # each temperature learns
  assert set(cached[1]) >= {'temperature@8', 'temperature@16', 'loss@8', 'acc_i2t@16'}


@pytest.mark.parametrize('loss, message', [
    (dict(matryoshka_dims=(64, 32)), 'loss.matryoshka_dims must be ascending and unique, got (64, 32)'),
    (dict(matryoshka_dims=(32, 32)), 'ascending and unique'),
    (dict(matryoshka_dims=(32, 256)), '256 is wider than the embedding (128'),
    (dict(matryoshka_dims=(32, 64), matryoshka_weights=(1.0,)),
     'loss.matryoshka_weights must have one weight per matryoshka_dims entry (2), got 1'),
    (dict(matryoshka_weights=(1.0,)), 'need loss.matryoshka_dims'),
    (dict(matryoshka_per_prefix_temperature=True), 'need loss.matryoshka_dims'),
])
def test_bad_matryoshka_config_is_one_line(loss, message):
  config = tiny_config()
  config.loss.update(loss)
  with pytest.raises(ConfigError) as info:
    check_matryoshka(config.loss, 128)
  assert message in str(info.value) and '\n' not in str(info.value)


@pytest.mark.parametrize('field, value, message', [
    ('matryoshka_dims', (0, 32), 'loss.matryoshka_dims must be each value positive, got (0, 32)'),
    ('matryoshka_weights', (1.0, -1.0), 'loss.matryoshka_weights must be each value positive'),
])
def test_matryoshka_field_rules(field, value, message):
  config = tiny_config()
  config.loss[field] = value
  with pytest.raises(ConfigError, match='^' + message.replace('(', r'\(').replace(')', r'\)')):
    check_fields(config)

