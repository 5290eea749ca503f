"""`config.init_from`: a fresh run takes chosen parameters from another run's or import's checkpoint."""

from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data import storage
from data.errors import ConfigError
from pretrain.config.cli import load_saved_config
from pretrain.models.param_paths import from_named, named_leaves, param_name
from pretrain.runtime.checkpoint import restore_model
from pretrain.step.freeze import matching_mask
from pretrain.step.state import merge_variables, split_variables
from pretrain.step.train_step import model_graphdef_and_variables


def init_from(config, params: Any, shardings: Any, mesh) -> Any:
  """`params` (the model's variables: parameters and any BatchNorm running averages, as one tree
  by `merge_variables`) with the leaves `config.init_from_include` names taken from
  `config.init_from`'s newest checkpoint, placed in `shardings`; shapes must agree."""
  source = config.init_from
  _, source_params, source_stats = model_graphdef_and_variables(
      load_saved_config(storage.join(source, 'config.json')))
  source_shapes = merge_variables(source_params, source_stats)
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
  step, restored_params, restored_stats = restore_model(
      source, None, *split_variables(abstract, source_stats))
  restored = named_leaves(merge_variables(restored_params, restored_stats))
  flat = {name: restored[name] if take[name] else leaf for name, leaf in ours.items()}
  if jax.process_index() == 0:
    print(f'init_from {source} (step {step}): {sum(take.values())} of {len(take)} parameter '
          'arrays', flush=True)
  return from_named(flat, params)
