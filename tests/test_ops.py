"""The two op sets (`model.ops`): stock JAX and the XLA:CPU set with hand-written derivatives
compute the same functions and gradients; the CPU set keeps less for the backward pass."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.profile_step import fused_ops, parse_hlo
from pretrain.backends.cpu import ops as cpu_ops
from pretrain.models import layers, variants
from pretrain.models import ops as stock_ops
from tests.helpers import (loss_and_grads, loss_and_grads_temp_bytes, max_tree_diff, mesh,
                           random_batch, step_builder, tiny_config)


def _nnx_dense(d_in, d_out, *, dtype, rngs, use_bias=True):
  return nnx.Linear(d_in, d_out, use_bias=use_bias, kernel_init=layers.KERNEL_INIT, dtype=dtype,
                    param_dtype=jnp.float32, preferred_element_type=jnp.float32, rngs=rngs)


def _step_with_ops(config, the_mesh, batch, params, ops: str):
  """(loss, metrics, grads) of the train step with `model.ops = ops`."""
  config = config.copy_and_resolve_references()
  config.model.ops = ops
  return loss_and_grads(config, the_mesh, batch, params)


def test_activations_equal_jax_values_and_derivatives():
  x = jnp.linspace(-8.0, 8.0, 4001)
  np.testing.assert_allclose(cpu_ops.gelu(x), jax.nn.gelu(x, approximate=False), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(cpu_ops.quick_gelu(x), x * jax.nn.sigmoid(1.702 * x))
  for lean, reference in ((cpu_ops.gelu, lambda v: jax.nn.gelu(v, approximate=False)),
                          (cpu_ops.quick_gelu, lambda v: v * jax.nn.sigmoid(1.702 * v))):
    d_lean = jax.vmap(jax.grad(lean))(x)
    d_reference = jax.vmap(jax.grad(reference))(x)
    assert float(jnp.max(jnp.abs(d_lean - d_reference))) <= 1e-6


def test_gelu_is_within_float32_rounding_of_the_exact_function():
  x = np.linspace(-10.0, 10.0, 20001, dtype=np.float32)
  x64 = x.astype(np.float64)
  cdf = 0.5 * (1.0 + np.vectorize(math.erf)(x64 / math.sqrt(2.0)))
  value = np.asarray(cpu_ops.gelu(jnp.asarray(x)), np.float64)
  slope = np.asarray(jax.vmap(jax.grad(cpu_ops.gelu))(jnp.asarray(x)), np.float64)
  exact_slope = cdf + x64 * np.exp(-0.5 * x64 ** 2) / math.sqrt(2.0 * math.pi)
  # A few ulps of max(1, |GELU(x)|): ~1.2e-7 relative per ulp in float32.
  assert np.max(np.abs(value - x64 * cdf) / np.maximum(1.0, np.abs(x64 * cdf))) <= 1e-6
  assert np.max(np.abs(slope - exact_slope)) <= 5e-7


@pytest.mark.parametrize('op_set', [cpu_ops.CPU_OPS, stock_ops.STOCK_OPS], ids=['cpu', 'stock'])
def test_layer_norm_equals_nnx_values_and_gradients(op_set):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 5, 32))
  scale, bias = jax.random.normal(jax.random.key(1), (32,)), jax.random.normal(jax.random.key(2), (32,))
  graphdef, _ = nnx.split(nnx.LayerNorm(32, epsilon=1e-5, rngs=nnx.Rngs(0)))

  def reference(x, scale, bias):
    return nnx.merge(graphdef, nnx.State({'scale': nnx.Param(scale), 'bias': nnx.Param(bias)}))(x)

  norm_graphdef, _ = nnx.split(op_set.layer_norm(32, epsilon=1e-5))

  def lean(x, scale, bias):
    return nnx.merge(norm_graphdef, nnx.State({'scale': nnx.Param(scale),
                                               'bias': nnx.Param(bias)}))(x)

  np.testing.assert_allclose(lean(x, scale, bias), reference(x, scale, bias), atol=1e-6)
  loss = lambda f: lambda *args: jnp.sum(jnp.sin(f(*args)))
  d_lean = jax.grad(loss(lean), argnums=(0, 1, 2))(x, scale, bias)
  d_reference = jax.grad(loss(reference), argnums=(0, 1, 2))(x, scale, bias)
  assert max_tree_diff(d_lean, d_reference) <= 1e-5


@pytest.mark.parametrize('activation', ['gelu', 'quick_gelu'])
def test_step_loss_and_gradients_equal_under_both_op_sets(activation):
  config = tiny_config()
  config.model.update(dict(activation=activation, image_ln_pre=True))
  batch = random_batch(config, 16)
  params = step_builder(config, mesh(2, 4)).init_state().params
  loss, _, grads = _step_with_ops(config, mesh(2, 4), batch, params, 'cpu')
  ref_loss, _, ref_grads = _step_with_ops(config, mesh(2, 4), batch, params, 'stock')
  assert abs(loss - ref_loss) <= 1e-6
  assert max_tree_diff(grads, ref_grads) <= 1e-5
  assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads)) > 1e-3  # not all zero


def test_bf16_step_equal_under_both_op_sets_up_to_bf16_rounding():
  """Under bf16 compute the sets round in different places (the CPU set's backward matmuls take
  bf16 gradients, autodiff's fp32 ones; an fp32 ulp can flip a bf16 rounding), so agreement is
  to bf16's precision (8 bits), not fp32's."""
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  batch = random_batch(config, 16)
  params = step_builder(config, mesh(2, 4)).init_state().params
  loss, _, grads = _step_with_ops(config, mesh(2, 4), batch, params, 'cpu')
  ref_loss, _, ref_grads = _step_with_ops(config, mesh(2, 4), batch, params, 'stock')
  assert abs(loss - ref_loss) <= 4e-3 * abs(ref_loss)
  for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert float(np.max(np.abs(g - ref))) <= 0.05 * float(np.max(np.abs(ref))) + 1e-7


def test_step_checkpoint_params_are_the_same_under_both_op_sets():
  """Same parameter names, shapes and initial values: a checkpoint of one set loads in the other."""
  config = tiny_config()
  trees = []
  for ops in ('cpu', 'stock'):
    config.model.ops = ops
    trees.append(jax.device_get(step_builder(config, mesh(1, 1, jax.devices()[:1]))
                                .init_state().params))
  assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
  assert max_tree_diff(*trees) == 0.0


def test_cpu_ops_need_less_temporary_memory():
  config = tiny_config()
  config.batch_size = 64
  temp = {}
  for ops in ('cpu', 'stock'):
    config.model.ops = ops
    temp[ops] = loss_and_grads_temp_bytes(config, mesh(1, 1, jax.devices()[:1]))
  assert temp['cpu'] <= 0.8 * temp['stock'], temp


def test_layer_norm_gradient_has_the_input_dtype():
  x = jax.random.normal(jax.random.key(0), (2, 3, 8), jnp.bfloat16)
  grad = jax.grad(lambda x: jnp.sum(cpu_ops.layer_norm(x, jnp.ones(8), jnp.zeros(8), 1e-5) ** 2))(x)
  assert grad.dtype == jnp.bfloat16


@pytest.mark.parametrize('masking', ['none', 'padding', 'causal', 'both'])
@pytest.mark.parametrize('op_set', [cpu_ops.CPU_OPS, stock_ops.STOCK_OPS], ids=['cpu', 'stock'])
def test_attention_equals_jax_values_and_gradients(masking, op_set):
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, g = (jax.random.normal(key, (3, 7, 2, 8)) for key in keys)
  key_mask = jnp.arange(7)[None, :] < jnp.array([7, 4, 1])[:, None]  # row 3 sees one key
  mask = key_mask[:, None, None, :] if masking in ('padding', 'both') else None
  causal = masking in ('causal', 'both')
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
  key_mask = key_mask if mask is not None else None
  lean = lambda q, k, v: op_set.attention(q, k, v, key_mask, causal)
  np.testing.assert_allclose(lean(q, k, v), reference(q, k, v), atol=1e-6)
  loss = lambda f: lambda *args: jnp.sum(f(*args) * g)
  d_lean = jax.grad(loss(lean), argnums=(0, 1, 2))(q, k, v)
  d_reference = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  assert max_tree_diff(d_lean, d_reference) <= 1e-5


@pytest.mark.parametrize('op_set', [cpu_ops.CPU_OPS, stock_ops.STOCK_OPS], ids=['cpu', 'stock'])
@pytest.mark.parametrize('shape, d_out', [((6, 24), 16), ((2, 3, 16), 24), ((2, 3, 24), 16)])
def test_linear_equals_nnx_linear_values_and_gradients(shape, d_out, op_set):
  """Both weight-gradient orientations (narrow input, narrow output) and 2-d / 3-d inputs."""
  lean = layers.dense(shape[-1], d_out, dtype=jnp.float32, rngs=nnx.Rngs(0), ops=op_set)
  reference = _nnx_dense(shape[-1], d_out, dtype=jnp.float32, rngs=nnx.Rngs(0))
  lean.bias[...] = reference.bias[...] = jax.random.normal(jax.random.key(1), (d_out,))
  x = jax.random.normal(jax.random.key(2), shape)
  np.testing.assert_allclose(lean(x), reference(x), atol=1e-6)

  def grads(module):
    graphdef, params = nnx.split(module)
    loss = lambda params, x: jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)))
    return jax.grad(loss, argnums=(0, 1))(params, x)
  assert max_tree_diff(grads(lean), grads(reference)) <= 1e-5


def test_bf16_linear_backward_is_the_bf16_product_with_fp32_accumulation():
  """Under bf16 compute, dx and dW are fp32-accumulated products of bf16-rounded operands."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 24))
  kernel, g = jax.random.normal(jax.random.key(1), (24, 8)), jax.random.normal(jax.random.key(2), (2, 5, 8))
  _, vjp = jax.vjp(lambda x, kernel: cpu_ops.linear(x, kernel, None, jnp.bfloat16, jnp.float32),
                   x, kernel)
  d_x, d_kernel = vjp(g)
  rounded = lambda a: np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
  np.testing.assert_allclose(d_x, rounded(g) @ rounded(kernel).T, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(d_kernel, np.einsum('btk,btn->kn', rounded(x), rounded(g)), rtol=1e-6,
                             atol=1e-6)


def _activation_sized_broadcasts(config) -> int:
  """Fusions of the compiled loss + gradients that only broadcast a non-constant to [B, T, width]."""
  size = variants.model_size(config.model)
  builder = step_builder(config, mesh(1, 1, jax.devices()[:1]))
  batch = random_batch(config, config.batch_size)
  lowered = jax.jit(builder.loss_and_grads).lower(builder.abstract_state.params, batch)
  definitions, bodies = parse_hlo(lowered.compile().as_text())
  widths = {size['image_width'], size['text_width']}
  count = 0
  for definition in definitions.values():
    called = re.search(r'kind=kLoop, calls=%?([\w.\-]+)', definition)
    body = bodies.get(called.group(1), []) if called else []
    shape = re.match(rf'f32\[{config.batch_size},\d+,(\d+)\]', definition)
    count += bool(any(' broadcast(' in line for line in body) and not fused_ops(body)
                  and 'fusion(%constant' not in definition
                  and shape and int(shape.group(1)) in widths)
  return count


def test_layer_norm_scales_are_not_materialised_at_activation_size():
  """The backward's g * scale keeps its broadcast inside the multiply (see _layer_norm_bwd).

  At this size XLA:CPU hands the LayerNorm reductions to YNNPACK (at 16 px / batch 16 it does
  not); without the barrier 9 scales are materialised here."""
  config = tiny_config()
  config.batch_size, config.model.image_size = 64, 32
  assert _activation_sized_broadcasts(config) == 0


def test_bf16_gradient_into_layer_norm_is_not_rounded_to_bf16():
  """LayerNorm -> bf16 dense: the dense layer's fp32-accumulated input gradient reaches the
  LayerNorm backward as it is (rounding it to bf16 would err by ~1e-3 relative)."""
  cpu = cpu_ops.CPU_OPS
  norm = layers.layer_norm(24, rngs=nnx.Rngs(0), ops=cpu)
  fc = layers.dense(24, 16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0), ops=cpu)
  x = jax.random.normal(jax.random.key(0), (2, 5, 24))
  g = jax.random.normal(jax.random.key(1), (2, 5, 16))
  d_x = jax.grad(lambda x: jnp.sum(fc(norm(x)) * g))(x)
  rounded = lambda a: np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
  d_normed_out = rounded(g) @ rounded(fc.kernel[...]).T  # exact fp32-accumulated dense backward
  _, norm_vjp = jax.vjp(lambda x: cpu_ops.layer_norm(x, norm.scale[...], norm.bias[...], 1e-5), x)
  expected = norm_vjp(jnp.asarray(d_normed_out, jnp.float32))[0]
  assert norm(x).dtype == jnp.float32
  np.testing.assert_allclose(d_x, expected, rtol=1e-5, atol=1e-5)
