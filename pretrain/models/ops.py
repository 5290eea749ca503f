"""The model's primitive ops (dense layer, LayerNorm, activations, attention) as one swappable set.

`STOCK_OPS` is stock JAX, differentiated by autodiff: what every accelerator runs. The XLA:CPU set
(pretrain/backends/cpu/ops.py) computes the same functions with hand-written derivatives; both
build modules with the same parameters (names, shapes, init streams), so a checkpoint written under
one set loads under the other. `config.model.ops` chooses (pretrain/backends: resolve_for_platform).
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class OpSet:
  """linear(d_in, d_out, *, dtype, kernel_init, use_bias, rngs) and layer_norm(width, *, epsilon,
  rngs) build modules; activations[name](x); attention(q, k, v, mask) over [B, T, heads, d] with a
  bool mask broadcastable to [B, heads, T, T] (or None)."""
  name: str
  linear: type
  layer_norm: type
  activations: Mapping[str, Callable[[Array], Array]]
  attention: Callable[..., Array]


class Linear(nnx.Module):
  """A dense layer with fp32 `kernel` [in, out] and `bias` (nnx.Linear's names and init order):
  `dtype` matmul inputs, fp32 accumulation and output."""

  def __init__(self, d_in: int, d_out: int, *, dtype, kernel_init, use_bias: bool = True,
               rngs: nnx.Rngs):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (d_in, d_out), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if use_bias else nnx.data(None)
    if use_bias:
      rngs.params()  # nnx.Linear draws a bias key: keep the same stream, so inits stay the same.
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    y = jax.lax.dot_general(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return y if self.bias is None else y + self.bias[...]


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with parameters `scale` and `bias` (nnx.LayerNorm's names).

  Statistics and output in fp32 whatever the input dtype: every consumer is a dense layer that
  rounds its input to the compute dtype itself.
  """

  def __init__(self, width: int, *, epsilon: float, rngs: nnx.Rngs | None = None):
    del rngs  # Deterministic init; accepted for the same call signature as nnx.LayerNorm.
    self.scale = nnx.Param(jnp.ones((width,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((width,), jnp.float32))
    self.epsilon = epsilon

  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    # E[x^2] - E[x]^2, clipped at 0: nnx.LayerNorm's default (use_fast_variance) and the CPU set's.
    var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean, 0.0)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


def gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x)."""
  return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: Array) -> Array:
  """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP weights were trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


def attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
  """softmax(q k^T / sqrt(d), masked) v: jax.nn.dot_product_attention, inputs in their dtype."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


STOCK_OPS = OpSet(name='stock', linear=Linear, layer_norm=LayerNorm,
                  activations={'gelu': gelu, 'quick_gelu': quick_gelu}, attention=attention)
