"""AdamW or LAMB with warmup + cosine or linear decay, a weight-decay mask, global-norm clipping."""

from typing import Any

import jax
import optax

from pretrain.models.param_paths import path_keys

# Leaves never decayed besides 1-d ones (biases, norm scales): the temperature and the learned
# positional/class/probe embeddings, as OpenCLIP and big_vision exclude them.
NO_DECAY_NAMES = ('log_logit_scale', 'pos_embed', 'cls_token', 'probe')


# Leaves decayed: weight matrices and convolution kernels ('kernel') and token embeddings
# ('embedding'). Chosen by name rather than rank so layer-stacked (scanned) biases stay undecayed.
DECAY_LEAF_NAMES = ('kernel', 'embedding')


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: kernels and token embeddings, not those listed above."""
  def decays(path, leaf):
    names = path_keys(path)
    return names[-1] in DECAY_LEAF_NAMES and not any(name in NO_DECAY_NAMES for name in names)
  return jax.tree_util.tree_map_with_path(decays, params)


SCHEDULES = ('cosine', 'linear')
OPTIMIZERS = ('adamw', 'lamb')


def make_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine or linear decay to `lr * end_lr_ratio` at the end."""
  end = optim_cfg.lr * optim_cfg.end_lr_ratio
  decay_steps = max(total_steps, optim_cfg.warmup_steps + 1)
  if optim_cfg.decay == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=optim_cfg.warmup_steps,
        decay_steps=decay_steps, end_value=end)
  warmup = optax.linear_schedule(0.0, optim_cfg.lr, optim_cfg.warmup_steps)
  decay = optax.linear_schedule(optim_cfg.lr, end, decay_steps - optim_cfg.warmup_steps)
  return optax.join_schedules([warmup, decay], [optim_cfg.warmup_steps])


def lamb(schedule: optax.Schedule, optim_cfg) -> optax.GradientTransformation:
  """LAMB with BERT's exclusions: no decay and no layer adaptation for what `decay_mask` spares.

  optax.lamb adapts every leaf; a leaf that starts at zero (the log temperature, biases) then gets
  a trust ratio of |w| / |update| ~ 0 after its first step and never moves again.
  """
  return optax.chain(
      optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
      optax.add_decayed_weights(optim_cfg.weight_decay, mask=decay_mask),
      optax.masked(optax.scale_by_trust_ratio(), decay_mask),
      optax.scale_by_learning_rate(schedule))


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain of `config.optim` and its learning-rate schedule."""
  schedule = make_schedule(optim_cfg, total_steps)
  parts = []
  if optim_cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
  if optim_cfg.name == 'adamw':
    parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                             weight_decay=optim_cfg.weight_decay, mask=decay_mask))
  else:
    parts.append(lamb(schedule, optim_cfg))
  return optax.chain(*parts), schedule
