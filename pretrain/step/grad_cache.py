"""Gradient caching (GradCache, BASIC): full-batch negatives with one micro-batch of activations.

With `accum_steps` = k, the global batch is cut into k micro-batches, each holding every device's
own rows (so cutting moves no data between devices). Pass 1 embeds them without gradients;
the loss and its gradient with respect to all B embeddings are taken on the full global batch; pass
2 re-runs each micro-batch's towers forward and backward with its slice of those embedding
gradients and sums the parameter gradients. Gradients equal the full-batch step's; encoder
activations are those of one micro-batch, at the cost of one more forward pass.
"""

from typing import Any

import jax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pretrain.parallel import batch_slices, sharding


def split_micro(x: jax.Array, steps: int, mesh) -> jax.Array:
  """[B, ...] -> [steps, B/steps, ...]; micro-batch j takes rows j*m:(j+1)*m of every device."""
  x = batch_slices.split_rows(x, steps, sharding.batch_parallelism(mesh))
  return lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))


def join_micro(x: jax.Array, mesh) -> jax.Array:
  """Inverse of `split_micro`: [steps, B/steps, ...] -> [B, ...] in the original row order."""
  x = batch_slices.join_rows(x, sharding.batch_parallelism(mesh))
  return lax.with_sharding_constraint(x, sharding.batch_sharding(mesh))


def cached_loss_and_grads(builder, params: Any, batch: dict, steps: int):
  """(loss, metrics), grads of `builder.loss_and_metrics` on `batch`, `steps` micro-batches at a time."""
  mesh = builder.mesh
  images, texts = split_micro(batch['image'], steps, mesh), split_micro(batch['text'], steps, mesh)
  # Pass 1: embeddings of every micro-batch, no activations kept.
  img, txt = lax.map(lambda it: builder.embed(params, *it), (images, texts))
  head = jax.value_and_grad(builder.head_loss, argnums=(0, 1, 2), has_aux=True)
  (loss, metrics), (grads, d_img, d_txt) = head(params, join_micro(img, mesh), join_micro(txt, mesh))

  # Pass 2: each micro-batch's towers, backward from its cached embedding gradients.
  def accumulate(total, xs):
    image, text, d_i, d_t = xs
    _, pullback = jax.vjp(lambda p: builder.embed(p, image, text), params)
    return jax.tree.map(lambda a, g: a + g, total, pullback((d_i, d_t))[0]), None

  xs = (images, texts, split_micro(d_img, steps, mesh), split_micro(d_txt, steps, mesh))
  grads, _ = lax.scan(accumulate, grads, xs)
  return (loss, metrics), grads
