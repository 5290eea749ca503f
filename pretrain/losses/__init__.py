"""Contrastive losses over the global batch: softmax (local rows, tiled ring) and sigmoid (ring)."""

from typing import Callable, Sequence

from jax.sharding import Mesh

from pretrain.losses.sigmoid import make_sigmoid_ring_loss
from pretrain.losses.softmax import make_softmax_loss
from pretrain.losses.tiled import make_tiled_softmax_loss


# 'auto' is the first real implementation of each loss.
LOSS_IMPLS = {'softmax': ('auto', 'local_rows', 'tiled'), 'sigmoid': ('auto', 'ring')}


def make_loss(mesh: Mesh, batch_axes: Sequence[str], loss_cfg) -> Callable:
  """The loss `config.loss` names: (img, txt, scale[, bias]) -> (loss, metrics)."""
  if loss_cfg.name == 'sigmoid':
    return make_sigmoid_ring_loss(mesh, batch_axes, loss_cfg.tile)
  if loss_cfg.impl == 'tiled':
    return make_tiled_softmax_loss(mesh, batch_axes, loss_cfg.label_smoothing, loss_cfg.tile)
  return make_softmax_loss(mesh, batch_axes, loss_cfg.label_smoothing)
