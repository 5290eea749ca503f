"""Contrastive losses over the global batch: softmax (local rows, tiled ring) and sigmoid (ring),
each optionally summed over Matryoshka prefixes of the embeddings (matryoshka.py)."""

from typing import Callable, Sequence

from jax.sharding import Mesh

from pretrain.losses.matryoshka import make_matryoshka_loss, prefix_weights, prefix_widths
from pretrain.losses.sigmoid import make_sigmoid_ring_loss
from pretrain.losses.softmax import make_softmax_loss
from pretrain.losses.tiled import make_tiled_softmax_loss


# 'auto' is the first real implementation of each loss.
LOSS_IMPLS = {'softmax': ('auto', 'local_rows', 'tiled'), 'sigmoid': ('auto', 'ring')}


def make_loss(mesh: Mesh, batch_axes: Sequence[str], loss_cfg, width: int | None = None) -> Callable:
  """The loss `config.loss` names: (img, txt, scale[, bias]) -> (loss, metrics); with
  `loss_cfg.matryoshka_dims`, summed over those prefixes of embeddings `width` wide."""
  base = make_base_loss(mesh, batch_axes, loss_cfg)
  dims = tuple(loss_cfg.get('matryoshka_dims', ()))
  if not dims:
    return base
  weights = prefix_weights(dims, loss_cfg.get('matryoshka_weights', ()), width)
  return make_matryoshka_loss(base, prefix_widths(dims, width), weights)


def make_base_loss(mesh: Mesh, batch_axes: Sequence[str], loss_cfg) -> Callable:
  """The loss of one embedding width `config.loss` names (no Matryoshka prefixes)."""
  if loss_cfg.name == 'sigmoid':
    return make_sigmoid_ring_loss(mesh, batch_axes, loss_cfg.tile)
  if loss_cfg.impl == 'tiled':
    return make_tiled_softmax_loss(mesh, batch_axes, loss_cfg.label_smoothing, loss_cfg.tile)
  return make_softmax_loss(mesh, batch_axes, loss_cfg.label_smoothing)
