"""GELU, QuickGELU, LayerNorm and attention with hand-written derivatives that keep few activations.

Same functions and the same derivatives as jax.nn.gelu / nnx.LayerNorm; what changes is what the
backward pass keeps from the forward. Left to autodiff, exact GELU keeps four tensors of the MLP's
widest activation per block (erfc's pieces) and LayerNorm four of its input's size: on the `tiny`
benchmark 2.4 GB and 1.3 GB of the step's 4.7 GB of saved residuals, and XLA keeps erfc's
intermediates materialised until the backward pass. Here the GELUs keep only their input and
recompute the derivative in one backward pass; LayerNorm keeps its normalised input and 1/std.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
_SQRT_HALF = np.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x), as jax.nn.gelu(approximate=False)."""
  return 0.5 * x * jax.lax.erfc(-x * _SQRT_HALF.astype(x.dtype))


def _gelu_fwd(x):
  return _gelu(x), x


def _gelu_bwd(x, g):
  # Phi(x) + x phi(x), recomputed from x: one elementwise pass here instead of several
  # materialised erfc/exp intermediates kept from the forward pass. The barrier stops XLA's CSE
  # from merging this erfc with the forward's, which would keep the forward's pieces alive.
  x = jax.lax.optimization_barrier(x)
  cdf = 0.5 * jax.lax.erfc(-x * _SQRT_HALF.astype(x.dtype))
  return ((cdf + x * jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI.astype(x.dtype)) * g,)


gelu = jax.custom_vjp(_gelu)
gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _quick_gelu(x: Array) -> Array:
  """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP weights were trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


def _quick_gelu_bwd(x, g):
  x = jax.lax.optimization_barrier(x)  # As in _gelu_bwd: recompute, do not keep the forward's.
  s = jax.nn.sigmoid(1.702 * x)
  return ((s + 1.702 * x * s * (1.0 - s)) * g,)


quick_gelu = jax.custom_vjp(_quick_gelu)
quick_gelu.defvjp(lambda x: (_quick_gelu(x), x), _quick_gelu_bwd)


def _layer_norm(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, in fp32."""
  return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
  dtype_token = jnp.zeros((), x.dtype)  # The input's dtype, which its cotangent must have.
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  # E[x^2] - E[x]^2 in one pass, clipped at 0, as nnx.LayerNorm's default (use_fast_variance).
  var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean, 0.0)
  inv_std = jax.lax.rsqrt(var + epsilon)
  normed = (x - mean) * inv_std
  return normed * scale + bias, (normed, inv_std, scale, dtype_token)


def _layer_norm_bwd(epsilon, residuals, g):
  normed, inv_std, scale, dtype_token = residuals
  g = g.astype(jnp.float32)
  reduce_axes = tuple(range(g.ndim - 1))
  d_scale, d_bias = jnp.sum(g * normed, axis=reduce_axes), jnp.sum(g, axis=reduce_axes)
  d_normed = g * scale
  d_x = inv_std * (d_normed - jnp.mean(d_normed, axis=-1, keepdims=True)
                   - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
  return d_x.astype(dtype_token.dtype), d_scale, d_bias


layer_norm = jax.custom_vjp(_layer_norm, nondiff_argnums=(3,))
layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.Module):
  """LayerNorm with parameters `scale` and `bias` (nnx.LayerNorm's names, so checkpoints match)."""

  def __init__(self, width: int, *, epsilon: float, dtype, rngs: nnx.Rngs | None = None):
    del rngs  # Deterministic init; accepted for the same call signature as nnx.LayerNorm.
    self.scale = nnx.Param(jnp.ones((width,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((width,), jnp.float32))
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x: Array) -> Array:
    return layer_norm(x, self.scale[...], self.bias[...], self.epsilon).astype(self.dtype)


def _attention_logits(q, k, mask):
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
  logits = logits * (q.shape[-1] ** -0.5)
  return logits if mask is None else jnp.where(mask, logits, jnp.finfo(jnp.float32).min)


def _attention_fwd(q, k, v, mask):
  logits = _attention_logits(q, k, mask)
  lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  probs = jnp.exp(logits - lse)
  out = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32).astype(q.dtype)
  return out, (q, k, v, mask, out, lse)


def _attention_bwd(residuals, g):
  q, k, v, mask, out, lse = residuals
  q, k, v = jax.lax.optimization_barrier((q, k, v))  # Recompute; do not keep the forward's probs.
  probs = jnp.exp(_attention_logits(q, k, mask) - lse)
  g32 = g.astype(jnp.float32)
  d_v = jnp.einsum('bhqk,bqhd->bkhd', probs, g32)
  d_probs = jnp.einsum('bqhd,bkhd->bhqk', g32, v.astype(jnp.float32))
  row = jnp.einsum('bqhd,bqhd->bhq', g32, out.astype(jnp.float32))[..., None]
  d_logits = probs * (d_probs - row) * (q.shape[-1] ** -0.5)
  d_q = jnp.einsum('bhqk,bkhd->bqhd', d_logits, k.astype(jnp.float32))
  d_k = jnp.einsum('bhqk,bqhd->bkhd', d_logits, q.astype(jnp.float32))
  d_mask = None if mask is None else np.zeros(mask.shape, jax.dtypes.float0)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), d_mask


def _attention(q, k, v, mask):
  """softmax(q k^T / sqrt(d), masked) v over [B, T, heads, d]; `mask` bool, broadcastable to
  [B, heads, T, T], or None. Keeps q, k, v, the output and the row log-sum-exp for the backward
  pass and recomputes the probabilities there, instead of keeping the [B, heads, T, T] ones."""
  return _attention_fwd(q, k, v, mask)[0]


attention = jax.custom_vjp(_attention)
attention.defvjp(_attention_fwd, _attention_bwd)
