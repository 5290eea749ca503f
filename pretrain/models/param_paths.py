"""Parameter names: a leaf's pytree path as '/'-joined keys ('img/encoder/ln_final/scale').

Checkpoint shape checks, `freeze` / `init_from_include` regexes, weight import and export, and the
weight-decay mask all name parameters this way, so the rule lives here once.
"""

from typing import Any

import jax


def path_keys(path: tuple) -> list[str]:
  """The keys of a pytree path as strings: dict keys, sequence indices, attribute names."""
  return [str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))) for k in path]


def param_name(path: tuple) -> str:
  """A pytree path as the '/'-joined name parameters go by ('img/encoder/ln_final/scale')."""
  return '/'.join(path_keys(path))


def named_leaves(tree: Any) -> dict[str, Any]:
  """{param_name: leaf} of every leaf of a tree."""
  return {param_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def from_named(named: dict[str, Any], like: Any) -> Any:
  """A tree with `like`'s structure whose leaves are `named[param_name]`; inverse of named_leaves."""
  return jax.tree.unflatten(jax.tree.structure(like), [named[n] for n in named_leaves(like)])
