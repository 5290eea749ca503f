"""Which parameters train (`config.freeze`): trainable/frozen split of the parameter tree.

Parameters are named by '/'-joined paths ('img/encoder/blocks/0/attn/qkv/kernel'); both fields
hold regexes that must match a whole path. Frozen leaves are cut out of the tree the gradient and
the optimizer see (None in their place), so they cost no backward pass, hold no optimizer state and
get no weight decay; they reach the step's output untouched, bit for bit.
"""

import re
from typing import Any

import jax

from pretrain.models.param_paths import from_named, named_leaves
from data.errors import ConfigError


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

