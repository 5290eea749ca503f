"""The train state and the one jitted, pure train step over pytrees."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from data.records import BAD_KINDS
from pretrain.step import freeze
from pretrain.parallel import sharding
from pretrain.backends import resolve_for_platform
from pretrain.backends.cpu.tower_slices import map_over_chunks, resolve_chunks
from pretrain.step.grad_cache import cached_loss_and_grads
from pretrain.losses import make_loss
from pretrain.models import build_model
from pretrain.parallel.activations import activations_split_over
from pretrain.models.variants import image_tower_kind, model_size

# {'step': int32 [] (applied updates), 'params': pure dict, 'opt_state': optax state,
#  'rng': uint32 [2], 'bad_records': int32 [len(BAD_KINDS)] (skipped records, all processes),
#  'skipped_updates': int32 [] (non-finite updates skipped), 'consecutive_skips': int32 []}
TrainState = dict


def model_graphdef_and_shapes(config) -> tuple[nnx.GraphDef, Any]:
  """The model's static graph and the abstract (shape-only) pure dict of its parameters."""
  abstract = nnx.eval_shape(lambda: build_model(config.model, config.loss, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  return graphdef, nnx.to_pure_dict(state)


BATCH_STATS = 'batch_stats'  # Key of the new BatchNorm running averages among the step's metrics.


def with_batch_stats(params: Any, stats: dict) -> Any:
  """`params` (a nested pure dict) with the leaves named in `stats` replaced by its values."""
  if not stats:
    return params
  return {key: (with_batch_stats(value, stats[key]) if isinstance(value, dict) else stats[key])
          if key in stats else value for key, value in params.items()}


def batch_stats_of(params: Any, stats: dict) -> dict:
  """The leaves of `params` (a nested pure dict) at the paths of `stats`."""
  return {key: batch_stats_of(params[key], value) if isinstance(value, dict) else params[key]
          for key, value in stats.items()}


def kept_batch_stats(ok: jax.Array, stats: dict, old_params: Any) -> dict:
  """`stats` where `ok`, else the running averages of `old_params` they would replace."""
  return jax.tree.map(lambda new, old: jnp.where(ok, new, old), stats,
                      batch_stats_of(old_params, stats))


def init_params(config, seed: int) -> Any:
  """Fresh model parameters as a pure dict (call under jit to create them sharded)."""
  model = build_model(config.model, config.loss, nnx.Rngs(seed))
  return nnx.to_pure_dict(nnx.state(model))


class StepBuilder:
  """Everything the loop needs to create, shard and advance the train state on a mesh.

  `platform` ('cpu', 'gpu', 'cuda', 'tpu'; default: the mesh's devices') is the one the step is
  built for: `self.config` is `config` with its backend choices resolved for it
  (pretrain.backends.resolve_for_platform), which is what the model, the step and the loop read.
  """

  def __init__(self, config, mesh: Mesh, tx: optax.GradientTransformation,
               schedule: optax.Schedule, platform: str | None = None):
    self.platform = platform or mesh.devices.flat[0].platform
    config = resolve_for_platform(config, self.platform)
    self.config, self.mesh, self.tx, self.schedule = config, mesh, tx, schedule
    self.graphdef, param_shapes = model_graphdef_and_shapes(config)
    # Bool per parameter (config.freeze), or None when everything trains.
    self.frozen = (freeze.matching_mask(param_shapes, config.freeze, 'freeze')
                   if config.freeze else None)
    abstract = jax.eval_shape(self._init_state, param_shapes)
    rule = config.param_sharding
    self.state_shardings = {
        'step': sharding.replicated(mesh), 'rng': sharding.replicated(mesh),
        'bad_records': sharding.replicated(mesh),
        'skipped_updates': sharding.replicated(mesh),
        'consecutive_skips': sharding.replicated(mesh),
        'params': sharding.tree_shardings(abstract['params'], mesh, rule),
        'opt_state': sharding.tree_shardings(abstract['opt_state'], mesh, rule),
    }
    self.abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        abstract, self.state_shardings)
    self.loss_fn = make_loss(mesh, sharding.BATCH_AXES, config.loss)
    self.batch_shards = sharding.batch_parallelism(mesh)
    self.image_tower_is_vit = image_tower_kind(model_size(config.model)) == 'vit'
    # What auto tower slices depend on (tower_slices.resolve_chunks), read off the parameters'
    # actual shardings rather than re-deriving the FSDP placement rule.
    self.params_sharded = not all(
        s.is_fully_replicated for s in jax.tree.leaves(self.state_shardings['params']))

  def split_frozen(self, params: Any) -> tuple[Any, Any]:
    """(parameters the gradient and optimizer see, frozen ones None; the frozen ones, or None)."""
    return (params, None) if self.frozen is None else freeze.split(params, self.frozen)

  def _init_state(self, params: Any) -> TrainState:
    return {'step': jnp.zeros((), jnp.int32), 'params': params,
            'opt_state': self.tx.init(self.split_frozen(params)[0]),
            'rng': jax.random.key_data(jax.random.key(self.config.seed)),
            'bad_records': jnp.zeros(len(BAD_KINDS), jnp.int32),
            'skipped_updates': jnp.zeros((), jnp.int32),
            'consecutive_skips': jnp.zeros((), jnp.int32)}

  def init_state(self) -> TrainState:
    """A fresh state, created directly in its shardings."""
    def create():
      return self._init_state(init_params(self.config, self.config.seed))
    return jax.jit(create, out_shardings=self.state_shardings)()

  def embed(self, params: Any, images: jax.Array, texts: jax.Array,
            key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Both towers in training mode: unit image and text embeddings [n, D]."""
    return self.embed_and_stats(params, images, texts, key)[:2]

  def embed_and_stats(self, params: Any, images: jax.Array, texts: jax.Array,
                      key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, dict]:
    """Embeddings, activations split over the batch, and the updated BatchNorm running averages.

    The batch is the global array, so BatchNorm's statistics are over the global batch.
    """
    model = nnx.merge(self.graphdef, params)
    # A locked image tower (LiT) runs as at inference: BatchNorm running averages, every block.
    train_images = not freeze.tower_frozen(self.frozen, 'img')
    embed_images = lambda x: model.embed_images(x, train=train_images, key=key)
    with activations_split_over(self.mesh):
      # BatchNorm towers (EfficientNet) need the whole batch for their statistics.
      image_chunks = self.tower_chunks(images.shape[0]) if self.image_tower_is_vit else 1
      img = map_over_chunks(embed_images, images, image_chunks, self.batch_shards)
      txt = map_over_chunks(model.embed_texts, texts, self.tower_chunks(texts.shape[0]),
                            self.batch_shards)
    return img, txt, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  def tower_chunks(self, batch_size: int) -> int:
    """Slices of each device's part of a batch of `batch_size` the towers run on (tower_slices;
    one off the CPU, where the resolved config says 1)."""
    return resolve_chunks(self.config.tower_batch_chunks, batch_size // self.batch_shards,
                          self.params_sharded)

  def head_loss(self, params: Any, img: jax.Array, txt: jax.Array) -> tuple[jax.Array, dict]:
    """The global-batch contrastive loss of given embeddings (uses only the temperature/bias)."""
    model = nnx.merge(self.graphdef, params)
    scale = model.logit_scale()
    extra = (model.logit_bias[...],) if self.config.loss.name == 'sigmoid' else ()
    loss, metrics = self.loss_fn(img, txt, scale, *extra)
    return loss, {**metrics, 'logit_scale': scale, 'temperature': 1.0 / scale}

  def loss_and_metrics(self, params: Any, batch: dict,
                       key: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Forward pass of both towers and the global-batch contrastive loss.

    Models with BatchNorm also return their new running averages as metrics[BATCH_STATS].
    """
    img, txt, stats = self.embed_and_stats(params, batch['image'], batch['text'], key)
    loss, metrics = self.head_loss(params, img, txt)
    return loss, ({**metrics, BATCH_STATS: stats} if stats else metrics)

  def loss_and_grads(self, params: Any, batch: dict,
                     key: jax.Array | None = None) -> tuple[tuple[jax.Array, dict], Any]:
    """(loss, metrics), gradients of the trainable parameters (frozen ones None): directly, or by
    gradient caching over micro-batches."""
    if self.config.accum_steps > 1:
      return cached_loss_and_grads(self, params, batch, self.config.accum_steps)
    trainable, frozen = self.split_frozen(params)
    if frozen is None:
      return jax.value_and_grad(self.loss_and_metrics, has_aux=True)(params, batch, key)
    loss_of_trainable = lambda t: self.loss_and_metrics(freeze.combine(t, frozen), batch, key)
    return jax.value_and_grad(loss_of_trainable, has_aux=True)(trainable)

  def _inject_nonfinite(self, loss: jax.Array, state: TrainState) -> jax.Array:
    """Test-only hook (`config.debug.nonfinite_at_attempts`): NaN loss at chosen attempts."""
    attempts = tuple(self.config.debug.nonfinite_at_attempts)
    if not attempts:
      return loss
    attempt = state['step'] + state['skipped_updates'] + 1  # 1-based count of step calls
    return jnp.where(jnp.isin(attempt, jnp.asarray(attempts)), jnp.nan, loss)

  def _update_if(self, ok: jax.Array, grads: Any, state: TrainState) -> tuple[Any, Any]:
    """(params, opt_state) after one optimizer update where `ok`, else the old ones."""
    trainable, frozen = self.split_frozen(state['params'])

    def update(operands):
      grads, opt_state, trainable = operands
      updates, opt_state = self.tx.update(grads, opt_state, trainable)
      return optax.apply_updates(trainable, updates), opt_state

    def keep(operands):
      _, opt_state, trainable = operands
      return trainable, opt_state

    # A conditional rather than a select of new against old values: under the select, XLA copies
    # every Adam moment before updating it in place (1.2 GB of copies per step on `b32`, 0.3 GB of
    # temporaries), since the old value must outlive the new one.
    params, opt_state = jax.lax.cond(ok, update, keep, (grads, state['opt_state'], trainable))
    if frozen is not None:  # Frozen leaves pass through untouched.
      params = freeze.combine(params, frozen)
    return params, opt_state

  def _step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    # Stochastic depth draws from the run's key and the attempt count: a resumed run redraws the same.
    key = jax.random.fold_in(jax.random.wrap_key_data(state['rng']),
                             state['step'] + state['skipped_updates'])
    (loss, metrics), grads = self.loss_and_grads(state['params'], batch, key)
    loss = self._inject_nonfinite(loss, state)
    grad_norm = optax.global_norm(grads)
    # A non-finite loss or gradient leaves parameters, optimizer state and step untouched.
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = self._update_if(ok, grads, state)
    # Running averages get no gradient (and no decay, by name); they are replaced, not updated.
    stats = kept_batch_stats(ok, metrics.pop(BATCH_STATS, {}), state['params'])
    params = with_batch_stats(params, stats)
    metrics = {**metrics, 'loss': loss, 'grad_norm': grad_norm,
               'lr': self.schedule(state['step']), 'skipped': ~ok}
    new_state = {
        'step': state['step'] + ok.astype(jnp.int32),
        'params': params,
        'opt_state': opt_state,
        'rng': state['rng'],
        'bad_records': state['bad_records'] + jnp.sum(batch['bad'], axis=0, dtype=jnp.int32),
        'skipped_updates': state['skipped_updates'] + (~ok).astype(jnp.int32),
        'consecutive_skips': jnp.where(ok, 0, state['consecutive_skips'] + 1),
    }
    return new_state, metrics

  def jit_step(self) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The compiled step: explicit in/out shardings, the old state donated."""
    batch_shardings = {key: sharding.batch_sharding(self.mesh) for key in ('image', 'text', 'bad')}
    return jax.jit(self._step, in_shardings=(self.state_shardings, batch_shardings),
                   out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0)
