"""Which parameters train (`config.freeze`) and which start from another run (`config.init_from`).

Parameters are named by '/'-joined paths ('img/encoder/blocks/0/attn/qkv/kernel'); both fields
hold regexes that must match a whole path. Frozen leaves are cut out of the tree the gradient and
the optimizer see (None in their place), so they cost no backward pass, hold no optimizer state and
get no weight decay; they reach the step's output untouched, bit for bit.
"""

import os
import re
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pretrain.checkpoint import from_named, named_leaves, param_name, restore_params
from pretrain.errors import ConfigError


def matching_mask(tree: Any, patterns, field: str) -> Any:
  """Bool per leaf: its path fully matches one of `patterns`; a pattern matching nothing is an error."""
  compiled = [re.compile(p) for p in patterns]
  paths = list(named_leaves(tree))
  for pattern, regex in zip(patterns, compiled):
    if not any(regex.fullmatch(path) for path in paths):
      raise ConfigError(f'{field}: {pattern!r} matches no parameter (paths look like '
                        f'{paths[0]!r}, {paths[-1]!r})')
  return from_named({path: any(regex.fullmatch(path) for regex in compiled) for path in paths},
                    tree)


def split(tree: Any, frozen: Any) -> tuple[Any, Any]:
  """(trainable, frozen) trees of the same structure, None where a leaf belongs to the other."""
  trainable = jax.tree.map(lambda x, f: None if f else x, tree, frozen)
  kept = jax.tree.map(lambda x, f: x if f else None, tree, frozen)
  return trainable, kept


def combine(trainable: Any, frozen: Any) -> Any:
  """Inverse of `split`."""
  if isinstance(trainable, dict) or isinstance(frozen, dict):
    return {key: combine(trainable[key], frozen[key]) for key in trainable}
  return frozen if trainable is None else trainable


def tower_frozen(frozen: Any, tower: str) -> bool:
  """Whether every parameter of a tower ('img' or 'txt') is frozen."""
  return frozen is not None and all(jax.tree.leaves(frozen[tower]))


def init_from(config, params: Any, shardings: Any, mesh) -> Any:
  """`params` with the leaves `config.init_from_include` names taken from `config.init_from`'s
  newest checkpoint, placed in `shardings`; shapes must agree."""
  from pretrain.config_cli import load_saved_config
  from pretrain.train_step import model_graphdef_and_shapes
  source = config.init_from
  _, source_shapes = model_graphdef_and_shapes(
      load_saved_config(os.path.join(source, 'config.json')))
  take = named_leaves(matching_mask(params, config.init_from_include, 'init_from_include'))
  ours, our_shardings = named_leaves(params), named_leaves(shardings)
  theirs = named_leaves(source_shapes)
  for name, wanted in take.items():
    if not wanted:
      continue
    if name not in theirs:
      raise ConfigError(f'init_from {source} has no parameter {name} (init_from_include '
                        f'{tuple(config.init_from_include)})')
    if tuple(theirs[name].shape) != tuple(ours[name].shape):
      raise ConfigError(f'init_from {source}: {name} has shape {tuple(theirs[name].shape)}, '
                        f'this config makes {tuple(ours[name].shape)}')
  replicated = NamedSharding(mesh, P())

  def placed(path, leaf):  # Taken leaves land in their final sharding; the rest replicated.
    name = param_name(path)
    same = take.get(name) and tuple(leaf.shape) == tuple(ours[name].shape)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                sharding=our_shardings[name] if same else replicated)

  abstract = jax.tree_util.tree_map_with_path(placed, source_shapes)
  step, restored = restore_params(source, None, abstract)
  restored = named_leaves(restored)
  flat = {name: restored[name] if take[name] else leaf for name, leaf in ours.items()}
  if jax.process_index() == 0:
    print(f'init_from {source} (step {step}): {sum(take.values())} of {len(take)} parameter '
          'arrays', flush=True)
  return from_named(flat, params)
