"""The train state: one typed pytree that the step, the loop, checkpoints, plans and tests share."""

import dataclasses
from typing import Any

import jax
from flax import nnx, struct


@struct.dataclass
class TrainState:
  """Everything a run carries from one step to the next.

  step: int32 [], applied (not skipped) updates.
  params: pure dict of the model's nnx.Param leaves; the only part the gradient and optimizer see.
  batch_stats: pure dict of the model's nnx.BatchStat leaves (BatchNorm running averages), replaced
    by each applied step; no gradient, no optimizer moments, no decay. {} for models without them.
  opt_state: the optax state of the trainable params (frozen ones hold None).
  rng: uint32 [2], key data of the run's key (stochastic depth folds in the attempt count).
  bad_records: int32 [len(data.records.BAD_KINDS)], records skipped in batches, all processes.
  skipped_updates: int32 [], non-finite updates skipped.
  consecutive_skips: int32 [], non-finite updates skipped since the last applied one.
  """
  step: Any
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: Any
  bad_records: Any
  skipped_updates: Any
  consecutive_skips: Any


# Checkpoint items, named after the fields: each large part alone (eval jobs restore `params` and
# `batch_stats` without the optimizer state), the small counters together in the `train` item.
ARRAY_ITEMS = ('params', 'batch_stats', 'opt_state')
COUNTERS_ITEM = 'train'
COUNTER_FIELDS = tuple(f.name for f in dataclasses.fields(TrainState) if f.name not in ARRAY_ITEMS)


def checkpoint_items(state: TrainState) -> dict[str, Any]:
  """{item name: subtree} to save; an empty part (no BatchNorm) is left out, orbax saves no {}."""
  items = {name: getattr(state, name) for name in ARRAY_ITEMS if jax.tree.leaves(getattr(state, name))}
  return {**items, COUNTERS_ITEM: {name: getattr(state, name) for name in COUNTER_FIELDS}}


def from_checkpoint_items(items: dict[str, Any]) -> TrainState:
  """Inverse of `checkpoint_items` (a missing array item is {})."""
  return TrainState(**{name: items.get(name, {}) for name in ARRAY_ITEMS},
                    **items[COUNTERS_ITEM])


def merge_variables(params: dict, batch_stats: dict) -> dict:
  """The model's variables as one nested dict (their paths are disjoint), as legacy checkpoints'
  `params` held them and `config.init_from_include` names them."""
  out = dict(params)
  for key, value in batch_stats.items():
    out[key] = merge_variables(params.get(key, {}), value) if isinstance(value, dict) else value
  return out


def split_variables(variables: dict, stats_like: dict) -> tuple[dict, dict]:
  """Inverse of `merge_variables`: (params, batch_stats), the latter at the paths of `stats_like`."""
  params, stats = {}, {}
  for key, value in variables.items():
    if key not in stats_like:
      params[key] = value
    elif isinstance(value, dict):
      params[key], stats[key] = split_variables(value, stats_like[key])
    else:
      stats[key] = value
  return params, stats


def merge_model(graphdef: nnx.GraphDef, params: Any, batch_stats: Any = None) -> nnx.Module:
  """The model of `graphdef` holding these parameters and running averages (None: no BatchNorm)."""
  return nnx.merge(graphdef, params, batch_stats or {})
