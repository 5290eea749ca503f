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
  """linear(d_in, d_out, *, dtype, kernel_init, use_bias, rngs, out_dtype=None) and
  layer_norm(width, *, epsilon, rngs) build modules; activations[name](x); attention(q, k, v,
  key_mask, causal) over [B, T, heads, d] with a bool key mask [B, T] (or None) and a static
  causal flag.

  `attention_in_compute_dtype`: whether the layers hand attention q, k, v in the compute dtype
  (bf16 under `model.dtype=bfloat16`: what the fused GPU/TPU kernels take) or in fp32 (the CPU
  attention: XLA:CPU runs batched bf16 matmuls by converting them to fp32, so slower, not faster).
  `model.attention` replaces the set's attention (pretrain/backends: op_set).
  """
  name: str
  linear: type
  layer_norm: type
  activations: Mapping[str, Callable[[Array], Array]]
  attention: Callable[..., Array]
  attention_in_compute_dtype: bool = True


class Linear(nnx.Module):
  """A dense layer with fp32 `kernel` [in, out] and `bias` (nnx.Linear's names and init order):
  `dtype` matmul inputs, fp32 accumulation and bias, output in `out_dtype` (default `dtype`)."""

  def __init__(self, d_in: int, d_out: int, *, dtype, kernel_init, use_bias: bool = True,
               rngs: nnx.Rngs, out_dtype=None):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (d_in, d_out), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if use_bias else nnx.data(None)
    if use_bias:
      rngs.params()  # nnx.Linear draws a bias key: keep the same stream, so inits stay the same.
    self.dtype = dtype
    self.out_dtype = dtype if out_dtype is None else out_dtype

  def __call__(self, x: Array) -> Array:
    y = matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    # The bias is added to the fp32 accumulator; its gradient (a sum over the batch) stays fp32.
    return (y if self.bias is None else y + self.bias[...]).astype(self.out_dtype)


def _matmul_fwd(x: Array, kernel: Array) -> tuple[Array, tuple]:
  y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32)
  return y, (x, kernel)


def _matmul_bwd(residuals, g):
  # The fp32 output gradient enters both products in the inputs' dtype (bf16 x bf16 with fp32
  # accumulation, as under torch.autocast): autodiff would pair it, fp32, with a bf16 operand,
  # and XLA would run that product in fp32.
  x, kernel = residuals
  g = g.astype(x.dtype)
  d_x = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
  axes = tuple(range(x.ndim - 1))
  d_kernel = jax.lax.dot_general(x, g, ((axes, axes), ((), ())),
                                 preferred_element_type=jnp.float32)
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


@jax.custom_vjp
def matmul(x: Array, kernel: Array) -> Array:
  """x @ kernel over x's last axis: fp32 accumulation and output; the backward's two products
  take the inputs' dtype too."""
  return _matmul_fwd(x, kernel)[0]


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with parameters `scale` and `bias` (nnx.LayerNorm's names).

  Statistics and the affine step in fp32 whatever the input dtype; the output in the input's dtype
  (the residual stream's: bf16 under bf16 compute), which the next dense layer takes as it is.
  """

  def __init__(self, width: int, *, epsilon: float, rngs: nnx.Rngs | None = None):
    del rngs  # Deterministic init; accepted for the same call signature as nnx.LayerNorm.
    self.scale = nnx.Param(jnp.ones((width,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((width,), jnp.float32))
    self.epsilon = epsilon

  def __call__(self, x: Array) -> Array:
    dtype, x = x.dtype, x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    # E[x^2] - E[x]^2, clipped at 0: nnx.LayerNorm's default (use_fast_variance) and the CPU set's.
    var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean, 0.0)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
    return y.astype(dtype)


def gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x)."""
  return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: Array) -> Array:
  """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP weights were trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


def combined_mask(key_mask: Array | None, causal: bool, length: int) -> Array | None:
  """The bool mask [B|1, 1, T, T] of a key-padding mask [B, T] and/or a causal flag (or None)."""
  mask = None if key_mask is None else key_mask[:, None, None, :]
  if causal:
    tril = jnp.tril(jnp.ones((length, length), bool))[None, None]
    mask = tril if mask is None else mask & tril
  return mask


def attention(q: Array, k: Array, v: Array, key_mask: Array | None = None,
              causal: bool = False) -> Array:
  """softmax(q k^T / sqrt(d), masked) v with XLA's implementation (jax.nn.dot_product_attention):
  fp32 logits and softmax whatever the inputs' dtype, the output in q's dtype."""
  return jax.nn.dot_product_attention(q, k, v, mask=combined_mask(key_mask, causal, q.shape[1]),
                                      implementation='xla')


def cudnn_attention(q: Array, k: Array, v: Array, key_mask: Array | None = None,
                    causal: bool = False) -> Array:
  """The same function with cuDNN's fused flash-attention kernel (NVIDIA GPUs; bf16/fp16 q, k, v).

  The causal mask goes in as `is_causal`, so cuDNN skips the masked blocks rather than computing
  and masking them; a padding mask goes in as a mask, which jax turns into an additive bias:
  broadcast here to [B, 1, T, T], the bias shape cuDNN takes without broadcasting over queries.
  """
  length = q.shape[1]
  mask = (None if key_mask is None else
          jnp.broadcast_to(key_mask[:, None, None, :], (q.shape[0], 1, length, length)))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                      implementation='cudnn')


STOCK_OPS = OpSet(name='stock', linear=Linear, layer_norm=LayerNorm,
                  activations={'gelu': gelu, 'quick_gelu': quick_gelu}, attention=attention)
