"""Transformer building blocks shared by the image and text towers."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.models.ops import OpSet
from pretrain.parallel.activations import batch_sharded

Array = jax.Array
Dtype = Any

# Xavier-uniform kernels and zero biases: the init of big_vision's ViT and of CLIP-style towers.
KERNEL_INIT = nnx.initializers.xavier_uniform()
EMBED_INIT = nnx.initializers.normal(stddev=0.02)


def dense(d_in: int, d_out: int, *, dtype: Dtype, rngs: nnx.Rngs, ops: OpSet,
          use_bias: bool = True, out_dtype: Dtype | None = None) -> nnx.Module:
  """A dense layer with fp32 parameters, `dtype` matmul inputs, fp32 accumulation and bias, and
  its output in `out_dtype` (default `dtype`: bf16 activations under bf16 compute, which halves
  what the backward pass keeps and the memory traffic per layer; README, "Mixed precision")."""
  return ops.linear(d_in, d_out, dtype=dtype, kernel_init=KERNEL_INIT, use_bias=use_bias,
                    rngs=rngs, out_dtype=out_dtype)


def layer_norm(width: int, *, rngs: nnx.Rngs, ops: OpSet) -> nnx.Module:
  """LayerNorm with fp32 parameters and statistics, its output in the input's dtype; epsilon 1e-5
  as in CLIP."""
  return ops.layer_norm(width, epsilon=1e-5, rngs=rngs)


# `model.activation`: exact GELU (our default, OpenCLIP's and HF's 'gelu') or QuickGELU (weights of
# the OpenAI lineage; importers read it from the source config). Every op set has both.
ACTIVATIONS = ('gelu', 'quick_gelu')


class Mlp(nnx.Module):
  """Two-layer MLP of a Transformer block."""

  def __init__(self, width: int, hidden: int, *, dtype: Dtype, rngs: nnx.Rngs, ops: OpSet,
               activation: str = 'gelu'):
    self.fc1 = dense(width, hidden, dtype=dtype, rngs=rngs, ops=ops)
    self.fc2 = dense(hidden, width, dtype=dtype, rngs=rngs, ops=ops)
    self.activation = ops.activations[activation]

  def __call__(self, x: Array) -> Array:
    return self.fc2(self.activation(self.fc1(x)))


class SelfAttention(nnx.Module):
  """Multi-head self-attention with one fused q/k/v projection."""

  def __init__(self, width: int, heads: int, *, dtype: Dtype, rngs: nnx.Rngs, ops: OpSet):
    if width % heads:
      raise ValueError(f'width {width} is not divisible by heads {heads}')
    self.heads = heads
    self.qkv = dense(width, 3 * width, dtype=dtype, rngs=rngs, ops=ops)
    self.out = dense(width, width, dtype=dtype, rngs=rngs, ops=ops)
    self.attention = ops.attention
    # q, k, v in the compute dtype for the fused kernels (bf16 on accelerators), fp32 for the CPU
    # attention (OpSet.attention_in_compute_dtype says why).
    self.qkv_dtype = dtype if ops.attention_in_compute_dtype else jnp.float32

  def __call__(self, x: Array, key_mask: Array | None = None, causal: bool = False) -> Array:
    batch, length, width = x.shape
    q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
    shape = (batch, length, self.heads, width // self.heads)
    q, k, v = (t.reshape(shape).astype(self.qkv_dtype) for t in (q, k, v))
    y = self.attention(q, k, v, key_mask, causal)
    return self.out(y.reshape(batch, length, width))


class EncoderBlock(nnx.Module):
  """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

  def __init__(self, width: int, heads: int, mlp_dim: int, *, dtype: Dtype, rngs: nnx.Rngs,
               ops: OpSet, activation: str = 'gelu'):
    self.ln_attn = layer_norm(width, rngs=rngs, ops=ops)
    self.attn = SelfAttention(width, heads, dtype=dtype, rngs=rngs, ops=ops)
    self.ln_mlp = layer_norm(width, rngs=rngs, ops=ops)
    self.mlp = Mlp(width, mlp_dim, dtype=dtype, rngs=rngs, ops=ops, activation=activation)

  def __call__(self, x: Array, key_mask: Array | None = None, causal: bool = False) -> Array:
    x = x + self.attn(self.ln_attn(x), key_mask, causal)
    return x + self.mlp(self.ln_mlp(x))


# Rematerialisation policies of a Transformer block (per tower, `model.image_remat/text_remat`):
# 'none' keeps every activation; 'full' keeps only each block's input and recomputes the block in
# the backward pass; 'dots' also keeps the outputs of matmuls without batch dimensions (big_vision's
# usual choice: most of the saving, little recompute).
REMAT_POLICIES = {'none': None, 'full': jax.checkpoint_policies.nothing_saveable,
                  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
  """One module whose parameters are the given identical modules' parameters stacked on axis 0."""
  graphdef = nnx.graphdef(modules[0])
  states = [nnx.state(m) for m in modules]
  return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


class Encoder(nnx.Module):
  """A stack of pre-LN blocks followed by a final LayerNorm.

  With `scan`, the blocks' parameters are stacked ([depth, ...]) and applied by `lax.scan`: one
  block is compiled instead of `depth` (faster compiles, same maths and same initial values).
  """

  def __init__(self, width: int, depth: int, heads: int, mlp_dim: int, *, dtype: Dtype,
               rngs: nnx.Rngs, ops: OpSet, remat: str = 'none', scan: bool = False,
               activation: str = 'gelu'):
    if remat not in REMAT_POLICIES:
      raise ValueError(f'unknown remat policy {remat!r}; known: {", ".join(REMAT_POLICIES)}')
    self.remat, self.scan, self.dtype = remat, scan, dtype
    blocks = [EncoderBlock(width, heads, mlp_dim, dtype=dtype, rngs=rngs, ops=ops,
                           activation=activation) for _ in range(depth)]
    self.blocks = stack_modules(blocks) if scan else nnx.List(blocks)
    self.ln_final = layer_norm(width, rngs=rngs, ops=ops)

  def __call__(self, x: Array, key_mask: Array | None = None, causal: bool = False) -> Array:
    graphdef = nnx.graphdef(self.blocks[0] if not self.scan else self.blocks)
    # The residual stream is in the compute dtype (bf16 under bf16 compute, as MaxText and torch
    # autocast users run it): the towers hand in fp32 embeddings, so that the lookups' and
    # positions' gradients are summed over the batch in fp32; each block's output has x's dtype.
    x = x.astype(self.dtype)

    def run_block(x, block_state):
      return batch_sharded(nnx.merge(graphdef, block_state)(batch_sharded(x), key_mask, causal))

    if self.remat != 'none':
      run_block = jax.checkpoint(run_block, policy=REMAT_POLICIES[self.remat],
                                 prevent_cse=not self.scan)
    if self.scan:
      x, _ = jax.lax.scan(lambda h, s: (run_block(h, s), None), x, nnx.state(self.blocks))
    else:
      for block in self.blocks:
        x = run_block(x, nnx.state(block))
    return self.ln_final(x)


class AttentionPool(nnx.Module):
  """Multi-head attention pooling with a learned probe (big_vision's MAP head)."""

  def __init__(self, width: int, heads: int, mlp_dim: int, *, dtype: Dtype, rngs: nnx.Rngs,
               ops: OpSet, activation: str = 'gelu'):
    self.heads = heads
    self.probe = nnx.Param(EMBED_INIT(rngs.params(), (1, 1, width), jnp.float32))
    self.q = dense(width, width, dtype=dtype, rngs=rngs, ops=ops)
    self.kv = dense(width, 2 * width, dtype=dtype, rngs=rngs, ops=ops)
    self.out = dense(width, width, dtype=dtype, rngs=rngs, ops=ops)
    self.ln = layer_norm(width, rngs=rngs, ops=ops)
    self.mlp = Mlp(width, mlp_dim, dtype=dtype, rngs=rngs, ops=ops, activation=activation)
    self.qkv_dtype = dtype if ops.attention_in_compute_dtype else jnp.float32  # As SelfAttention.

  def __call__(self, x: Array) -> Array:
    batch, length, width = x.shape
    head_dim = width // self.heads
    # fp32, rounded by the dense layer: the probe's gradient is a sum over the batch.
    probe = jnp.broadcast_to(self.probe[...], (batch, 1, width))
    q = self.q(probe).reshape(batch, 1, self.heads, head_dim)
    k, v = jnp.split(self.kv(x), 2, axis=-1)
    k, v = (t.reshape(batch, length, self.heads, head_dim) for t in (k, v))
    # One query: XLA's attention (fp32 softmax), with the blocks' q, k, v dtype.
    q, k, v = (t.astype(self.qkv_dtype) for t in (q, k, v))
    y = self.out(jax.nn.dot_product_attention(q, k, v).reshape(batch, 1, width))
    y = y + self.mlp(self.ln(y))
    return y[:, 0]
