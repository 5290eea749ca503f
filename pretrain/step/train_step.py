"""The one jitted, pure train step over the train state (pretrain/step/state.py)."""

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
from pretrain.step.state import ARRAY_ITEMS, COUNTER_FIELDS, TrainState, merge_model
from pretrain.losses import make_loss, prefix_widths
from pretrain.models import build_model
from pretrain.parallel.activations import activations_split_over
from pretrain.models.variants import image_tower_kind, model_size

def model_graphdef_and_variables(config) -> tuple[nnx.GraphDef, Any, Any]:
  """The model's static graph and the abstract (shape-only) pure dicts of its parameters
  (nnx.Param) and of its BatchNorm running averages (nnx.BatchStat; {} without BatchNorm)."""
  abstract = nnx.eval_shape(lambda: build_model(config.model, config.loss, nnx.Rngs(0)))
  graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def model_graphdef_and_shapes(config) -> tuple[nnx.GraphDef, Any]:
  """The model's static graph and the abstract (shape-only) pure dict of its parameters."""
  graphdef, params, _ = model_graphdef_and_variables(config)
  return graphdef, params


def init_variables(config, seed: int) -> tuple[Any, Any]:
  """Fresh (parameters, BatchNorm running averages) as pure dicts (call under jit to shard them)."""
  model = build_model(config.model, config.loss, nnx.Rngs(seed))
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def init_params(config, seed: int) -> Any:
  """Fresh model parameters as a pure dict (call under jit to create them sharded)."""
  return init_variables(config, seed)[0]


def state_shardings(abstract: TrainState, mesh: Mesh, rule: str) -> TrainState:
  """Shardings of every part of the state: arrays placed by `config.param_sharding`'s rule,
  the counters and the key replicated."""
  arrays = {name: sharding.tree_shardings(getattr(abstract, name), mesh, rule)
            for name in ARRAY_ITEMS}
  return TrainState(**arrays, **{name: sharding.replicated(mesh) for name in COUNTER_FIELDS})


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
    self.graphdef, param_shapes, stats_shapes = model_graphdef_and_variables(config)
    # Bool per parameter (config.freeze), or None when everything trains.
    self.frozen = (freeze.matching_mask(param_shapes, config.freeze, 'freeze')
                   if config.freeze else None)
    abstract = jax.eval_shape(self._init_state, param_shapes, stats_shapes)
    self.state_shardings = state_shardings(abstract, mesh, config.param_sharding)
    self.abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        abstract, self.state_shardings)
    width = model_size(config.model)['embed_dim']
    self.loss_fn = make_loss(mesh, sharding.BATCH_AXES, config.loss, width)
    self.prefix_widths = prefix_widths(config.loss.get('matryoshka_dims', ()), width)
    self.batch_shards = sharding.batch_parallelism(mesh)
    self.image_tower_is_vit = image_tower_kind(model_size(config.model)) == 'vit'
    # What auto tower slices depend on (tower_slices.resolve_chunks), read off the parameters'
    # actual shardings rather than re-deriving the FSDP placement rule.
    self.params_sharded = not all(
        s.is_fully_replicated for s in jax.tree.leaves(self.state_shardings.params))

  def split_frozen(self, params: Any) -> tuple[Any, Any]:
    """(parameters the gradient and optimizer see, frozen ones None; the frozen ones, or None)."""
    return (params, None) if self.frozen is None else freeze.split(params, self.frozen)

  def _init_state(self, params: Any, batch_stats: Any) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, batch_stats=batch_stats,
                      opt_state=self.tx.init(self.split_frozen(params)[0]),
                      rng=jax.random.key_data(jax.random.key(self.config.seed)),
                      bad_records=jnp.zeros(len(BAD_KINDS), jnp.int32),
                      skipped_updates=zero, consecutive_skips=zero)

  def init_state(self) -> TrainState:
    """A fresh state, created directly in its shardings."""
    def create():
      return self._init_state(*init_variables(self.config, self.config.seed))
    return jax.jit(create, out_shardings=self.state_shardings)()

  def embed(self, params: Any, images: jax.Array, texts: jax.Array,
            key: jax.Array | None = None, batch_stats: Any = None) -> tuple[jax.Array, jax.Array]:
    """Both towers in training mode: unit image and text embeddings [n, D]."""
    return self.embed_and_stats(params, images, texts, key, batch_stats)[:2]

  def embed_and_stats(self, params: Any, images: jax.Array, texts: jax.Array,
                      key: jax.Array | None = None,
                      batch_stats: Any = None) -> tuple[jax.Array, jax.Array, dict]:
    """Embeddings, activations split over the batch, and the updated BatchNorm running averages
    (`batch_stats`: the current ones; None for models without BatchNorm).

    The batch is the global array, so BatchNorm's statistics are over the global batch.
    """
    model = merge_model(self.graphdef, params, batch_stats)
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

  def head_loss(self, params: Any, img: jax.Array, txt: jax.Array,
                batch_stats: Any = None) -> tuple[jax.Array, dict]:
    """The global-batch contrastive loss of given embeddings (uses only the temperature/bias)."""
    model = merge_model(self.graphdef, params, batch_stats)
    scale = model.logit_scale()
    extra = (model.loss_logit_bias(),) if self.config.loss.name == 'sigmoid' else ()
    scales = model.loss_logit_scale()  # a vector with one Matryoshka temperature per prefix
    loss, metrics = self.loss_fn(img, txt, scales, *extra)
    if scales.ndim:
      metrics.update({f'temperature@{k}': 1.0 / s for k, s in zip(self.prefix_widths, scales[:-1])})
    # SigLIP's learned bias (the full width's) is logged beside its temperature (eval.report draws
    # both).
    bias = {'logit_bias': model.logit_bias[...]} if extra else {}
    return loss, {**metrics, 'logit_scale': scale, 'temperature': 1.0 / scale, **bias}

  def loss_and_metrics(self, params: Any, batch: dict, key: jax.Array | None = None,
                       batch_stats: Any = None) -> tuple[jax.Array, tuple[dict, Any]]:
    """Forward pass of both towers and the global-batch contrastive loss; -> (loss, (metrics,
    the new BatchNorm running averages))."""
    img, txt, new_stats = self.embed_and_stats(params, batch['image'], batch['text'], key,
                                               batch_stats)
    loss, metrics = self.head_loss(params, img, txt, batch_stats)
    return loss, (metrics, new_stats)

  def loss_stats_and_grads(self, params: Any, batch_stats: Any, batch: dict,
                           key: jax.Array | None = None) -> tuple[tuple[jax.Array, dict, Any], Any]:
    """(loss, metrics, new running averages), gradients of the trainable parameters (frozen ones
    None): directly, or by gradient caching over micro-batches (no BatchNorm there: validate.py)."""
    if self.config.accum_steps > 1:
      (loss, metrics), grads = cached_loss_and_grads(self, params, batch, self.config.accum_steps)
      return (loss, metrics, batch_stats), grads
    trainable, frozen = self.split_frozen(params)
    full = (lambda t: t) if frozen is None else (lambda t: freeze.combine(t, frozen))
    loss_of = lambda t: self.loss_and_metrics(full(t), batch, key, batch_stats)
    (loss, (metrics, new_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    return (loss, metrics, new_stats), grads

  def loss_and_grads(self, params: Any, batch: dict, key: jax.Array | None = None,
                     batch_stats: Any = None) -> tuple[tuple[jax.Array, dict], Any]:
    """(loss, metrics), gradients of the trainable parameters (frozen ones None)."""
    (loss, metrics, _), grads = self.loss_stats_and_grads(params, batch_stats, batch, key)
    return (loss, metrics), grads

  def _update_if(self, ok: jax.Array, grads: Any, state: TrainState) -> tuple[Any, Any]:
    """(params, opt_state) after one optimizer update where `ok`, else the old ones."""
    trainable, frozen = self.split_frozen(state.params)

    def update(operands):
      grads, opt_state, trainable = operands
      updates, opt_state = self.tx.update(grads, opt_state, trainable)
      return optax.apply_updates(trainable, updates), opt_state

    def keep(operands):
      _, opt_state, trainable = operands
      return trainable, opt_state

    # A conditional rather than a select of new against old values: under the select, XLA copies
    # every optimizer moment before updating it in place, since the old value must outlive the new
    # one (figures: benchmarks/README.md).
    params, opt_state = jax.lax.cond(ok, update, keep, (grads, state.opt_state, trainable))
    if frozen is not None:  # Frozen leaves pass through untouched.
      params = freeze.combine(params, frozen)
    return params, opt_state

  def _step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    # Stochastic depth draws from the run's key and the attempt count: a resumed run redraws the same.
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                             state.step + state.skipped_updates)
    (loss, metrics, new_stats), grads = self.loss_stats_and_grads(state.params, state.batch_stats,
                                                                  batch, key)
    grad_norm = optax.global_norm(grads)
    # A non-finite loss or gradient leaves parameters, averages, optimizer state and step untouched.
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = self._update_if(ok, grads, state)
    # Running averages are replaced by the forward pass's, not updated by the optimizer.
    batch_stats = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_stats,
                               state.batch_stats)
    metrics = {**metrics, 'loss': loss, 'grad_norm': grad_norm,
               'lr': self.schedule(state.step), 'skipped': ~ok}
    new_state = state.replace(
        step=state.step + ok.astype(jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=opt_state,
        bad_records=state.bad_records + jnp.sum(batch['bad'], axis=0, dtype=jnp.int32),
        skipped_updates=state.skipped_updates + (~ok).astype(jnp.int32),
        consecutive_skips=jnp.where(ok, 0, state.consecutive_skips + 1))
    return new_state, metrics

  def jit_step(self) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The compiled step: explicit in/out shardings, the old state donated."""
    batch_shardings = {key: sharding.batch_sharding(self.mesh) for key in ('image', 'text', 'bad')}
    return jax.jit(self._step, in_shardings=(self.state_shardings, batch_shardings),
                   out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0)
