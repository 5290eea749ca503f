"""The XLA:CPU op set (`model.ops = 'cpu'`): Linear, GELU, QuickGELU, LayerNorm and attention
with hand-written derivatives.

Same functions, parameters and derivatives as the stock set (pretrain/models/ops.py); what changes
is what the backward pass keeps from the forward and the operand layouts XLA:CPU gets. Left to
autodiff, exact GELU keeps four tensors of the MLP's widest activation per block (erfc's pieces)
and LayerNorm four of its input's size, a large share of the step's saved residuals, and XLA:CPU
keeps erfc's intermediates materialised until the backward pass. Here the GELUs keep only their
input and recompute the derivative in one backward pass; LayerNorm keeps its normalised input and
1/std. The linear layer's backward runs its two matmuls in the compute dtype, as its forward does
(see `linear`). Measured figures: benchmarks/README.md.
"""

import jax
import jax.numpy as jnp
import numpy as np

from pretrain.models import ops as stock

Array = jax.Array
_SQRT_HALF = np.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _normal_cdf(x: Array) -> Array:
  """Phi(x) = (1 + erf(x / sqrt 2)) / 2, the form PyTorch's exact nn.GELU uses.

  jax.nn.gelu writes it with erfc, which XLA expands into both of its branches, an exp and a
  divide: slower than this erf form on XLA:CPU. Against a float64 GELU both are within a few
  float32 ulps of the value (this form 1.1e-6 at x = 5.3, erfc's 3.8e-7), and the derivatives
  within 2.2e-7 and 1.5e-7.
  """
  return 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF.astype(x.dtype)))


def _gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x): jax.nn.gelu(approximate=False) to 1e-6, in PyTorch's form."""
  return x * _normal_cdf(x)


def _gelu_fwd(x):
  return _gelu(x), x


def _gelu_bwd(x, g):
  # Phi(x) + x phi(x), recomputed from x: one elementwise pass here instead of several
  # materialised erf/exp intermediates kept from the forward pass. The barrier stops XLA's CSE
  # from merging this erf with the forward's, which would keep the forward's pieces alive.
  x = jax.lax.optimization_barrier(x)
  return ((_normal_cdf(x) + x * jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI.astype(x.dtype)) * g,)


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
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, computed in fp32; the
  output in x's dtype."""
  return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
  dtype_token = jnp.zeros((), x.dtype)  # The input's dtype, which its cotangent must have.
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  # E[x^2] - E[x]^2 in one pass, clipped at 0, as nnx.LayerNorm's default (use_fast_variance).
  var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean, 0.0)
  inv_std = jax.lax.rsqrt(var + epsilon)
  normed = (x - mean) * inv_std
  return (normed * scale + bias).astype(dtype_token.dtype), (normed, inv_std, scale, dtype_token)


def _layer_norm_bwd(epsilon, residuals, g):
  normed, inv_std, scale, dtype_token = residuals
  g = g.astype(jnp.float32)
  reduce_axes = tuple(range(g.ndim - 1))
  d_scale, d_bias = jnp.sum(g * normed, axis=reduce_axes), jnp.sum(g, axis=reduce_axes)
  # Tied to g, the scale is broadcast where it is used: otherwise XLA:CPU hands these reductions
  # to YNNPACK with the scale materialised at full activation size, made early and alive across
  # the whole step (one such tensor per LayerNorm, a visible share of the step's temporaries).
  g, scale = jax.lax.optimization_barrier((g, scale))
  d_normed = g * scale
  d_x = inv_std * (d_normed - jnp.mean(d_normed, axis=-1, keepdims=True)
                   - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
  return d_x.astype(dtype_token.dtype), d_scale, d_bias


layer_norm = jax.custom_vjp(_layer_norm, nondiff_argnums=(3,))
layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(stock.LayerNorm):
  """The stock LayerNorm's module (parameters `scale`, `bias`; output in the input's dtype) over
  `layer_norm`."""

  def __call__(self, x: Array) -> Array:
    return layer_norm(x, self.scale[...], self.bias[...], self.epsilon)


def _matmul(a: Array, b: Array) -> Array:
  """[..., m, k] x [..., k, n] -> [..., m, n] with fp32 accumulation.

  Every attention matmul is written in this one layout: XLA:CPU's batched kernels run it several
  times faster than the same product with a transposed operand.
  """
  return jnp.einsum('...mk,...kn->...mn', a, b, preferred_element_type=jnp.float32)


def _heads(x: Array) -> Array:
  """[B, T, heads, d] -> [B, heads, T, d]."""
  return jnp.swapaxes(x, 1, 2)


def _heads_t(x: Array) -> Array:
  """[B, T, heads, d] -> [B, heads, d, T]."""
  return jnp.einsum('bthd->bhdt', x)


def _masked(logits: Array, mask: Array | None) -> Array:
  return logits if mask is None else jnp.where(mask, logits, jnp.finfo(jnp.float32).min)


def _attention_fwd(q, k, v, mask):
  scale = q.shape[-1] ** -0.5
  logits = _masked(_matmul(_heads(q), _heads_t(k)) * scale, mask)  # [B, heads, q, k]
  lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  probs = jnp.exp(logits - lse)
  out = _heads(_matmul(probs.astype(v.dtype), _heads(v))).astype(q.dtype)
  return out, (q, k, v, mask, out, lse)


def _attention_bwd(residuals, g):
  # Worked in the transposed [key, query] orientation, so that every product has _matmul's
  # layout: P^T = softmax recomputed from k q^T, dV = P^T g, dP^T = v g^T, dS^T = P^T (dP^T - r),
  # dK = dS^T q, dQ^T = k^T dS^T.
  q, k, v, mask, out, lse = residuals
  q, k, v = jax.lax.optimization_barrier((q, k, v))  # Recompute; do not keep the forward's probs.
  scale, dtype = q.shape[-1] ** -0.5, q.dtype
  mask_t = None if mask is None else jnp.swapaxes(mask, -1, -2)
  logits_t = _masked(_matmul(_heads(k), _heads_t(q)) * scale, mask_t)
  probs_t = jnp.exp(logits_t - jnp.swapaxes(lse, -1, -2))  # [B, heads, k, q]
  row = jnp.einsum('bqhd,bqhd->bhq', g.astype(jnp.float32), out.astype(jnp.float32))[:, :, None]
  g_c = g.astype(dtype)
  d_v = _matmul(probs_t.astype(dtype), _heads(g_c))
  d_logits_t = (probs_t * (_matmul(_heads(v), _heads_t(g_c)) - row) * scale).astype(dtype)
  d_k = _matmul(d_logits_t, _heads(q))
  d_q = jnp.einsum('bhdq->bqhd', _matmul(_heads_t(k), d_logits_t))
  d_mask = None if mask is None else np.zeros(mask.shape, jax.dtypes.float0)
  return d_q.astype(dtype), _heads(d_k).astype(dtype), _heads(d_v).astype(dtype), d_mask


def _attention(q, k, v, mask):
  """softmax(q k^T / sqrt(d), masked) v over [B, T, heads, d]; `mask` bool, broadcastable to
  [B, heads, T, T], or None. Matmul inputs in q's dtype, fp32 accumulation and softmax. Keeps q,
  k, v, the output and the row log-sum-exp for the backward pass and recomputes the
  probabilities there, instead of keeping the [B, heads, T, T] ones."""
  return _attention_fwd(q, k, v, mask)[0]


masked_attention = jax.custom_vjp(_attention)
masked_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q: Array, k: Array, v: Array, key_mask: Array | None = None,
              causal: bool = False) -> Array:
  """`masked_attention` with the op sets' mask arguments (a key mask [B, T], a causal flag)."""
  return masked_attention(q, k, v, stock.combined_mask(key_mask, causal, q.shape[1]))


def _contract_leading(x: Array, g: Array) -> Array:
  """sum over all leading axes of x[..., k] g[..., n] -> [k, n], fp32-accumulated.

  Written with every leading axis contracted (not flattened first): XLA:CPU then makes one
  transposed copy of x and runs its bf16 kernel; the flattened [M, k] x [M, n] form sends bf16
  inputs through an fp32 conversion and a generic dot, several times slower.
  """
  axes = tuple(range(x.ndim - 1))
  return jax.lax.dot_general(x, g, ((axes, axes), ((), ())), preferred_element_type=jnp.float32)


def _linear(x: Array, kernel: Array, bias: Array | None, dtype, out_dtype) -> Array:
  """x @ kernel + bias over x's last axis: `dtype` matmul inputs, fp32 accumulation and bias,
  output in `out_dtype`."""
  return _linear_fwd(x, kernel, bias, dtype, out_dtype)[0]


def _linear_fwd(x, kernel, bias, dtype, out_dtype):
  x_c, kernel_c = x.astype(dtype), kernel.astype(dtype)
  y = jax.lax.dot_general(x_c, kernel_c, (((x.ndim - 1,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32)
  if bias is not None:
    y = y + bias
  return y.astype(out_dtype), (x_c, kernel_c, jnp.zeros((), x.dtype), bias is not None)


def _linear_bwd(dtype, out_dtype, residuals, g):
  del out_dtype  # g has it; the bias gradient (a sum over the batch) is fp32 whatever it is.
  x_c, kernel_c, dtype_token, has_bias = residuals
  d_bias = (jnp.sum(g.astype(jnp.float32), axis=tuple(range(g.ndim - 1))) if has_bias
            else None)
  # The output gradient enters both matmuls in the compute dtype, as under torch.autocast: with
  # bf16 compute the backward runs bf16 kernels too, instead of fp32 ones on an fp32 gradient.
  g_c = g.astype(dtype)
  d_x = jax.lax.dot_general(g_c, kernel_c, (((g.ndim - 1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
  # XLA:CPU copies the left operand of the weight-gradient matmul into [features, tokens]
  # order. In fp32 the narrower of x and g goes left: that copy is the cheaper one, the [narrow,
  # wide] product is the faster, and for fc2 it keeps XLA from fusing the GELU that made x into a
  # transposing loop (erfc recomputed there, per element, at a large cost). bf16 keeps x left: jaxlib 0.10.2's CPU backend compiles the g-left bf16 form to a
  # dot thunk that rejects bf16 inputs with an fp32 output.
  if g.shape[-1] < x_c.shape[-1] and jnp.dtype(dtype) == jnp.float32:
    d_kernel = _contract_leading(g_c, x_c).T
  else:
    d_kernel = _contract_leading(x_c, g_c)
  return d_x.astype(dtype_token.dtype), d_kernel, d_bias


linear = jax.custom_vjp(_linear, nondiff_argnums=(3, 4))
linear.defvjp(_linear_fwd, _linear_bwd)


class Linear(stock.Linear):
  """The stock dense layer's module (fp32 `kernel` [in, out] and `bias`) over `linear`."""

  def __call__(self, x: Array) -> Array:
    bias = None if self.bias is None else self.bias[...]
    return linear(x, self.kernel[...], bias, self.dtype, self.out_dtype)


CPU_OPS = stock.OpSet(name='cpu', linear=Linear, layer_norm=LayerNorm,
                      activations={'gelu': gelu, 'quick_gelu': quick_gelu}, attention=attention,
                      attention_in_compute_dtype=False)
