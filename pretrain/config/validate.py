"""Checks of a config against the machine it runs on, all before anything is compiled."""

import os
import re

from data import storage
from data.errors import ConfigError, require
from data.sources import check_spec
from pretrain.config.rules import check_fields, check_matryoshka
from pretrain.losses import LOSS_IMPLS
from pretrain.models.variants import image_tower_kind, model_size
from pretrain.parallel.sharding import batch_ways, resolve_mesh_shape
from pretrain.runtime import tracker
from pretrain.runtime.checkpoint import check_checkpoint_location


def check_model(model) -> None:
  """Every model field's type and range (rules.RULES), variant, pooling and image/patch sizes."""
  check_fields(model, 'model.')
  try:
    size = model_size(model)
  except KeyError as e:
    raise ConfigError(e.args[0]) from None
  require(model.text_pool != 'eos_id' or model.text_eos_id >= 0,
          "model.text_pool 'eos_id' needs model.text_eos_id (the end-of-text id to pool at)")
  if image_tower_kind(size) != 'vit':
    require(model.image_remat == 'none' and not model.scan_layers,
            f'variant {model.variant!r} has an EfficientNet image tower: image_remat and '
            'scan_layers apply to Transformer towers only')
    return
  require(model.image_size % size['patch'] == 0,
          f'model.image_size {model.image_size} is not divisible by the patch size {size["patch"]} '
          f'of variant {model.variant!r}')


def check_training(config, num_devices: int, num_processes: int) -> dict[str, int]:
  """Everything about a training config that can be wrong; returns the resolved mesh shape.

  Each field's own type, range and choices: rules.RULES (check_fields); here, what relates fields
  to each other or to the machine.
  """
  check_fields(config)
  check_model(config.model)
  impls = LOSS_IMPLS[config.loss.name]
  require(config.loss.impl in impls, f'unknown loss.impl {config.loss.impl!r} for '
          f'{config.loss.name}; known: {", ".join(impls)}')
  check_matryoshka(config.loss, model_size(config.model)['embed_dim'])
  check_spec(config.data.train)
  require(config.accum_steps == 1 or image_tower_kind(model_size(config.model)) == 'vit',
          f'accum_steps {config.accum_steps}: gradient caching needs towers without BatchNorm '
          f'(variant {config.model.variant!r} has one; micro-batch statistics would change it)')
  require(config.optim.warmup_steps < config.total_steps,
          f'optim.warmup_steps {config.optim.warmup_steps} is not shorter than the run '
          f'(total_steps {config.total_steps})')
  check_patterns(config)
  shape = resolve_mesh_shape(dict(config.mesh), num_devices)
  ways = batch_ways(shape)
  require(config.batch_size % ways == 0,
          f'batch_size {config.batch_size} is not divisible by the data-parallel size {ways} '
          f'(mesh {shape})')
  require(config.batch_size % (ways * config.accum_steps) == 0,
          f'batch_size {config.batch_size} is not divisible by the data-parallel size {ways} x '
          f'accum_steps {config.accum_steps}')
  chunks = config.tower_batch_chunks
  per_device = config.batch_size // (ways * config.accum_steps)
  require(chunks == 0 or per_device % chunks == 0,
          f'tower_batch_chunks {chunks} does not divide the per-device batch {per_device} '
          f'(batch_size {config.batch_size} / data-parallel size {ways} / accum_steps '
          f'{config.accum_steps})')
  # Imported here: the pipeline pulls in grain, which weight import (check_model) does not need.
  from data.pipeline import check_augment, check_process_split
  check_augment(config.data.augment, tuple(config.data.rrc_scale))
  check_process_split(config.batch_size, num_processes)
  tracker.check_installed(config)  # config.log.wandb without wandb: refused before any work
  return shape


def check_patterns(config) -> None:
  """`freeze` and `init_from_include` are lists of valid regexes; `init_from` is a run's workdir."""
  for field in ('freeze', 'init_from_include'):
    require(isinstance(config[field], (tuple, list)),
            f'{field} must be a list of regexes, got {config[field]!r}')
    for pattern in config[field]:
      try:
        re.compile(pattern)
      except re.error as e:
        raise ConfigError(f'{field}: {pattern!r} is not a valid regex ({e})') from None
  require(not (config.freeze and config.accum_steps > 1),
          'freeze with accum_steps > 1 is not supported: gradient caching differentiates every '
          'parameter; use accum_steps=1')
  if config.init_from:
    storage.check_reachable(config.init_from, 'init_from')
    require(storage.is_file(storage.join(config.init_from, 'config.json')),
            f'init_from {config.init_from} has no config.json: give the workdir of a training run '
            'or of pretrain.import_weights')


def check_vocab(tokenizer_vocab: int, model_vocab: int, spec: str) -> None:
  """The tokenizer's ids must all have a row in the embedding table."""
  require(tokenizer_vocab <= model_vocab,
          f'tokenizer {spec} has {tokenizer_vocab} ids but model.vocab_size is {model_vocab}')


def check_workdir(workdir: str) -> None:
  """The workdir exists (or can be created) and is writable; a bucket's is reachable."""
  if storage.scheme(workdir):
    check_checkpoint_location(workdir)
    return
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'workdir {workdir} cannot be created: {e.strerror}') from None
  require(os.access(workdir, os.W_OK), f'workdir {workdir} is not writable')
  checkpoints = os.path.join(workdir, 'checkpoints')
  require(not os.path.isdir(checkpoints) or os.access(checkpoints, os.W_OK),
          f'checkpoint directory {checkpoints} is not writable')
