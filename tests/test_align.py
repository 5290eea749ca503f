"""The ALIGN recipe: EfficientNet sizes, global-batch BatchNorm, BERT-style masks, LAMB, the config."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.align import get_config
from data.errors import ConfigError
from data.records import BAD_KINDS
from pretrain.backends.cpu.ops import CPU_OPS
from pretrain.models import build_model, get_variant
from pretrain.models.efficientnet import EfficientNetTower, MBConv
from pretrain.models.towers import TextTower
from pretrain.step.optim import make_optimizer
from pretrain.parallel.sharding import batch_sharding
from pretrain.models.param_paths import named_leaves
from pretrain.runtime.loop import nonfinite_step
from pretrain.config.validate import check_training
from tests.helpers import (ROOT, max_tree_diff, mesh, random_batch, read_metrics, run_train,
                           step_builder)

# Published sizes with the 1000-class ImageNet head: Keras' EfficientNetB0-B7 (BatchNorm running
# averages included) and the Noisy Student paper's 480M for L2.
PUBLISHED = {'b0': 5_330_564, 'b1': 7_856_232, 'b2': 9_177_569, 'b3': 12_320_535,
             'b4': 19_466_823, 'b5': 30_562_527, 'b6': 43_265_143, 'b7': 66_658_687,
             'l2': 480_000_000}


def small_config():
  """configs/align.py:tiny at 16 px and batch 16: compiles in seconds."""
  config = get_config('tiny')
  config.model.image_size, config.batch_size = 16, 16
  return config


@pytest.mark.parametrize('scale', sorted(PUBLISHED))
def test_efficientnet_has_the_published_parameter_count(scale):
  tower = nnx.eval_shape(lambda: EfficientNetTower(
      scale=scale, embed_dim=640, mean=(0.5,) * 3, std=(0.5,) * 3, dtype=jnp.float32,
      rngs=nnx.Rngs(0), ops=CPU_OPS))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(tower)))
  with_classifier = count - tower.head_width * 640 + tower.head_width * 1000 + 1000
  assert abs(with_classifier - PUBLISHED[scale]) <= 0.01 * PUBLISHED[scale], with_classifier


def test_batchnorm_statistics_are_over_the_global_batch():
  """8 devices with 2 examples each give the one-device embeddings and running averages."""
  config = small_config()
  batch = random_batch(config, 16)
  graphdef, state = nnx.split(build_model(config.model, config.loss, nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)

  def image_tower(p, images):  # training mode: batch statistics, stochastic depth
    model = nnx.merge(graphdef, p)
    out = model.embed_images(images, train=True, key=jax.random.key(0))
    return out, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  results = []
  for the_mesh in (mesh(1, 1), mesh(8, 1)):
    images = jax.device_put(batch['image'], batch_sharding(the_mesh))
    results.append(jax.device_get(jax.jit(image_tower)(params, images)))
  (img1, stats1), (img8, stats8) = results
  assert max_tree_diff(img1, img8) <= 1e-5
  assert max_tree_diff(stats1, stats8) <= 1e-5
  # The averages moved (by 1 - momentum of the batch mean) from their initial zeros.
  assert float(np.max(np.abs(stats1['img']['stem_bn']['mean']))) > 1e-4


def test_stochastic_depth_drops_whole_examples_and_rescales_the_rest():
  """Training with a key: each example keeps its residual branch (scaled by 1/keep) or loses it."""
  norm = lambda c: nnx.BatchNorm(c, use_running_average=True, rngs=nnx.Rngs(0))
  block = MBConv(16, 16, 6, 3, 1, 0.5, norm=norm, rngs=nnx.Rngs(0), dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(1), (64, 4, 4, 16))
  branch = block(x, train=True, key=None) - x  # no key: every branch, unscaled
  out = block(x, train=True, key=jax.random.key(2))
  dropped = np.all(np.asarray(out) == np.asarray(x), axis=(1, 2, 3))
  kept = np.all(np.abs(np.asarray(out - x - 2.0 * branch)) <= 1e-5, axis=(1, 2, 3))
  assert np.all(dropped ^ kept) and 16 <= dropped.sum() <= 48, dropped.sum()
  # Eval mode (no training) never drops.
  np.testing.assert_allclose(block(x, train=False, key=jax.random.key(2)) - x,
                             block(x, train=False, key=None) - x)


def test_running_averages_are_state_apart_replaced_by_a_step_and_kept_by_a_skipped_one():
  """BatchNorm running averages are TrainState.batch_stats: not parameters, no optimizer moments;
  an applied step replaces them with its forward pass's, a skipped (non-finite) one keeps them."""
  config = small_config()
  the_mesh = mesh(1, 1, jax.devices()[:1])
  builder = step_builder(config, the_mesh)
  state = builder.init_state()
  stat_names = set(named_leaves(state.batch_stats))
  assert stat_names and {name.rsplit('/', 1)[1] for name in stat_names} == {'mean', 'var'}
  assert not stat_names & set(named_leaves(state.params))
  assert not [n for n in named_leaves(state.opt_state) if n.endswith(('/mean', '/var'))]
  batch = {**random_batch(config, 16), 'bad': np.zeros((16, len(BAD_KINDS)), np.int32)}
  batch = {k: jax.device_put(v, batch_sharding(the_mesh)) for k, v in batch.items()}
  initial = jax.device_get(state.batch_stats)
  state, metrics = builder.jit_step()(state, batch)
  applied = jax.device_get(state.batch_stats)
  assert not bool(metrics['skipped']) and max_tree_diff(initial, applied) > 1e-4
  state, metrics = nonfinite_step(builder)(state, batch)
  assert bool(metrics['skipped']) and max_tree_diff(applied, jax.device_get(state.batch_stats)) == 0.0


def test_eval_uses_the_running_averages():
  """Eval mode reads the stored averages (changing them changes the embedding); training does not."""
  config = small_config()
  graphdef, state = nnx.split(build_model(config.model, config.loss, nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  images = random_batch(config, 4)['image']
  moved = jax.tree.map(lambda x: x, params)
  moved['img']['head_bn']['mean'] = params['img']['head_bn']['mean'] + 0.5
  embed = jax.jit(lambda p, train: nnx.merge(graphdef, p).embed_images(images, train=train),
                  static_argnums=1)
  assert max_tree_diff(embed(params, False), embed(moved, False)) > 1e-3
  assert max_tree_diff(embed(params, True), embed(moved, True)) == 0.0


def test_bert_style_text_tower_ignores_padding():
  """Bidirectional [CLS] encoder: whatever sits at padded positions, the [CLS] output is the same."""
  size = get_variant(small_config().model.variant)

  def text_tower(context_length):
    return TextTower(vocab_size=64, context_length=context_length, width=size['text_width'],
                     depth=size['text_depth'], heads=size['text_heads'], mlp_dim=size['text_mlp'],
                     embed_dim=size['embed_dim'], causal=False, pool='cls', dtype=jnp.float32,
                     rngs=nnx.Rngs(0), ops=CPU_OPS)

  tower = text_tower(8)
  tokens = jnp.asarray([[5, 6, 7, 2, 0, 0, 0, 0], [9, 2, 0, 0, 0, 0, 0, 0]])
  valid = jnp.concatenate([jnp.ones((2, 1), bool), tokens != 0], axis=1)
  x = jax.random.normal(jax.random.key(0), (2, 9, size['text_width']))
  noisy = jnp.where(valid[..., None], x, 10 * jax.random.normal(jax.random.key(1), x.shape))
  out = tower.encoder(x, key_mask=valid, causal=False)[:, 0]
  assert float(jnp.max(jnp.abs(out - tower.encoder(noisy, key_mask=valid)[:, 0]))) <= 1e-5
  # ...and the mask is what does it: without it the padding leaks in.
  assert float(jnp.max(jnp.abs(out - tower.encoder(noisy, key_mask=None)[:, 0]))) > 1e-2
  # The whole tower: the same caption embeds identically whatever the context length.
  longer = text_tower(12)
  longer.pos_embed[...] = longer.pos_embed[...].at[:9].set(tower.pos_embed[...])
  padded = jnp.pad(tokens, ((0, 0), (0, 4)))
  assert float(jnp.max(jnp.abs(tower(tokens) - longer(padded)))) <= 1e-5


def test_lamb_and_the_linear_schedule_match_hand_computed_values():
  config = get_config('l2')
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  expected = {0: 0.0, 5_000: 5e-4, 10_000: 1e-3, 605_000: 1e-3 * 0.5, 1_200_000: 0.0}
  for step, value in expected.items():
    assert float(schedule(step)) == pytest.approx(value, abs=1e-9), step
  # One LAMB update after 10k steps (lr 1e-3; zero moments so far) on a decayed kernel, by hand.
  w = np.array([[1.0, -2.0], [0.5, 3.0]], np.float64)
  g = np.array([[0.1, 0.2], [-0.3, 0.4]], np.float64)
  params = {'kernel': jnp.asarray(w, jnp.float32)}
  state = jax.tree.map(lambda x: jnp.full_like(x, 10_000) if x.ndim == 0 and
                       jnp.issubdtype(x.dtype, jnp.integer) else x, tx.init(params))
  updates, _ = tx.update({'kernel': jnp.asarray(g, jnp.float32)}, state, params)
  t = 10_001  # Adam's bias correction counts this update
  m_hat = 0.1 * g / (1 - 0.9 ** t)
  v_hat = 0.001 * g * g / (1 - 0.999 ** t)
  direction = m_hat / (np.sqrt(v_hat) + 1e-6) + 1e-5 * w
  trust = np.linalg.norm(w) / np.linalg.norm(direction)
  np.testing.assert_allclose(np.asarray(updates['kernel']), -1e-3 * trust * direction, rtol=1e-5)


def test_align_config_is_the_papers_recipe():
  config = get_config('l2')
  assert (config.batch_size, config.model.context_length, config.data.resize,
          config.model.image_size) == (16_384, 64, 346, 289)
  assert (config.loss.init_logit_scale, config.loss.max_logit_scale,
          config.loss.label_smoothing) == (1.0, 0.0, 0.1)
  assert (config.optim.name, config.optim.weight_decay, config.optim.decay) == ('lamb', 1e-5,
                                                                                'linear')
  assert not config.model.text_causal and config.model.text_pool == 'cls'
  assert check_training(config, 1024, 128) == {'data': 1024, 'fsdp': 1}
  config = get_config('b7')
  with config.unlocked():
    config.accum_steps = 2
  with pytest.raises(ConfigError, match='gradient caching needs towers without BatchNorm'):
    check_training(config, 1024, 128)


@pytest.mark.slow
def test_tiny_align_trains_and_beats_chance(tmp_path):
  """Half of configs/align.py:tiny's schedule at 16 px beats chance by a margin that rounding-level
  changes of the build do not erase: two builds whose losses agree to 5e-4 at step 20 and then
  drift apart ended at acc1 0.0458 / 0.0406 and acc5 0.226 / 0.218 (chance 0.021 / 0.104)."""
  result = run_train(tmp_path, '--config.total_steps=100', '--config.log_every=10',
                     '--config.checkpoint_every=100', '--config.optim.warmup_steps=10',
                     '--config.model.image_size=16', '--config.data.resize=19',
                     config='configs/align.py:tiny', devices=1)
  assert result.returncode == 0, result.stderr[-2000:]
  losses = [r['loss'] for r in read_metrics(tmp_path)]
  assert np.mean(losses[-2:]) < 0.9 * losses[0], losses
  line = [l for l in result.stdout.splitlines() if l.startswith('zeroshot shapes_zeroshot step 100:')][-1]
  acc1 = float(line.split('acc1 ')[1].split()[0])
  acc5 = float(line.split('acc5 ')[1].split()[0])
  # 48 classes, 960 images: chance is 1/48 = 0.021 +- 0.0046 for acc1 and 5/48 = 0.104 +- 0.0099
  # for acc5 (binomial std); require 3 std above it for acc1 and 5 std for acc5.
  assert acc1 > 1 / 48 + 3 * 0.0046 and acc5 > 5 / 48 + 5 * 0.0099, line
  # The offline job, from the checkpoint alone (running averages included), gets the same result.
  job = subprocess.run([sys.executable, '-m', 'eval.zeroshot', '--workdir', str(tmp_path),
                        '--dataset', 'shapes:zeroshot', '--templates', 'shapes', '--once'],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       text=True, timeout=300)
  assert job.returncode == 0, job.stderr[-2000:]
  assert f'acc1 {acc1:.4f}' in job.stdout, (line, job.stdout)
