"""Flax NNX models of the dual encoder."""

from pretrain.models.dual_encoder import DualEncoder, build_model
from pretrain.models.variants import VARIANTS, get_variant

__all__ = ['DualEncoder', 'build_model', 'VARIANTS', 'get_variant']
