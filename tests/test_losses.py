"""The sharded local-rows loss equals the formula, on every mesh, with its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.losses.softmax import make_softmax_loss, softmax_reference
from tests.helpers import mesh


def numpy_formula(img, txt, scale, smoothing):
  """Symmetric CE over B x B logits, written out in float64 numpy."""
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
  n = len(img)
  target = (1 - smoothing) * np.eye(n) + smoothing / n

  def ce(z):
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(target * logp).sum(axis=1).mean()
  return 0.5 * (ce(logits) + ce(logits.T))


def unit_rows(key, n, d):
  x = jax.random.normal(key, (n, d))
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_reference_matches_numpy_formula(smoothing):
  k1, k2 = jax.random.split(jax.random.key(0))
  img, txt = unit_rows(k1, 24, 16), unit_rows(k2, 24, 16)
  loss, _ = softmax_reference(img, txt, jnp.float32(7.0), smoothing)
  expected = numpy_formula(np.asarray(img), np.asarray(txt), 7.0, smoothing)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('shape', [(1, 1), (8, 1), (4, 2), (2, 4)])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_sharded_loss_and_grads_equal_reference(shape, smoothing):
  k1, k2 = jax.random.split(jax.random.key(1))
  img, txt = unit_rows(k1, 32, 16), unit_rows(k2, 32, 16)
  # Correlated pairs, so accuracies are neither 0 nor 1.
  txt = (txt + 0.5 * img) / jnp.linalg.norm(txt + 0.5 * img, axis=1, keepdims=True)
  scale = jnp.float32(10.0)
  loss_fn = make_softmax_loss(mesh(*shape), ('data', 'fsdp'), smoothing)

  def sharded(i, t, s):
    return loss_fn(i, t, s)

  (loss, metrics), grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2), has_aux=True))(
      img, txt, scale)
  (ref_loss, ref_metrics), ref_grads = jax.value_and_grad(
      lambda i, t, s: softmax_reference(i, t, s, smoothing), argnums=(0, 1, 2), has_aux=True)(
          img, txt, scale)
  assert abs(float(loss) - float(ref_loss)) <= 1e-6
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5)
  for key in ('acc_i2t', 'acc_t2i'):
    assert float(metrics[key]) == float(ref_metrics[key])
  assert 0.0 < float(metrics['acc_i2t']) < 1.0


def test_logits_per_device_are_local_rows_only():
  """The compiled sharded loss never materialises a B x B matrix on one device."""
  b_total, dim = 64, 8
  loss_fn = make_softmax_loss(mesh(8, 1), ('data', 'fsdp'))
  args = (jnp.ones((b_total, dim)), jnp.ones((b_total, dim)), jnp.float32(1.0))
  hlo = jax.jit(loss_fn).lower(*args).compile().as_text()
  assert f'f32[8,{b_total}]' in hlo
  assert f'f32[{b_total},{b_total}]' not in hlo


@pytest.mark.parametrize('shape', [(1, 1), (8, 1), (2, 4)])
@pytest.mark.parametrize('smoothing, tile', [(0.0, 24), (0.1, 3), (0.1, 1000)])
def test_tiled_softmax_equals_local_rows(shape, smoothing, tile):
  from pretrain.losses.tiled import make_tiled_softmax_loss
  k1, k2 = jax.random.split(jax.random.key(3))
  img, txt = unit_rows(k1, 64, 16), unit_rows(k2, 64, 16)
  txt = (txt + 0.5 * img) / jnp.linalg.norm(txt + 0.5 * img, axis=1, keepdims=True)
  the_mesh = mesh(*shape)
  results = []
  for loss_fn in (make_softmax_loss(the_mesh, ('data', 'fsdp'), smoothing),
                  make_tiled_softmax_loss(the_mesh, ('data', 'fsdp'), smoothing, tile)):
    fn = jax.jit(jax.value_and_grad(lambda *a, f=loss_fn: f(*a), argnums=(0, 1, 2), has_aux=True))
    results.append(fn(img, txt, jnp.float32(10.0)))
  ((la, ma), ga), ((lb, mb), gb) = results
  assert abs(float(la) - float(lb)) <= 1e-5
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
  assert float(ma['acc_i2t']) == float(mb['acc_i2t']) and float(ma['acc_t2i']) == float(mb['acc_t2i'])


def test_tiled_softmax_never_builds_b_by_B_logits():
  from pretrain.losses.tiled import make_tiled_softmax_loss
  loss_fn = make_tiled_softmax_loss(mesh(8, 1), ('data', 'fsdp'), 0.0, tile=16)
  args = (jnp.ones((256, 8)), jnp.ones((256, 8)), jnp.float32(1.0))
  hlo = jax.jit(jax.grad(lambda *a: loss_fn(*a)[0], argnums=(0, 1))).lower(*args).compile().as_text()
  assert 'f32[32,16]' in hlo and 'f32[32,256]' not in hlo  # b x tile, never b x B
  # Text blocks travel round a ring: nothing the size of the global batch is gathered.
  assert 'collective-permute' in hlo and 'all-gather' not in hlo and 'f32[256,8]' not in hlo


@pytest.mark.parametrize('shape, tile', [((1, 1), 1024), ((8, 1), 3), ((4, 2), 8), ((4, 2), 5)])
def test_sigmoid_ring_equals_dense_reference(shape, tile):
  from pretrain.losses.sigmoid import make_sigmoid_ring_loss, sigmoid_reference
  k1, k2 = jax.random.split(jax.random.key(4))
  img, txt = unit_rows(k1, 32, 16), unit_rows(k2, 32, 16)
  txt = (txt + 0.8 * img) / jnp.linalg.norm(txt + 0.8 * img, axis=1, keepdims=True)
  loss_fn = make_sigmoid_ring_loss(mesh(*shape), ('data', 'fsdp'), tile)
  args = (img, txt, jnp.float32(10.0), jnp.float32(-10.0))
  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      lambda *a: loss_fn(*a), argnums=(0, 1, 2, 3), has_aux=True))(*args)
  (ref, ref_metrics), ref_grads = jax.value_and_grad(
      sigmoid_reference, argnums=(0, 1, 2, 3), has_aux=True)(*args)
  assert abs(float(loss) - float(ref)) <= 1e-5
  for x, y in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
  for key in ('acc_i2t', 'acc_t2i'):
    assert float(metrics[key]) == float(ref_metrics[key])
  if shape != (1, 1):  # a ring, not a gather
    hlo = jax.jit(lambda *a: loss_fn(*a)[0]).lower(*args).compile().as_text()
    assert 'collective-permute' in hlo and 'all-gather' not in hlo
