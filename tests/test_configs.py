"""configs/clip.py and configs/siglip.py: every variant builds, validates, and holds the published
architecture and recipe numbers (OpenCLIP's model_configs, CLIP's and SigLIP's papers)."""

import math

import pytest

from data.errors import ConfigError
from pretrain.config.cli import load_config_file
from pretrain.config.validate import check_training
from pretrain.models.variants import model_size

# Variant -> (patch, image width/depth/heads/mlp, text width/depth/heads/mlp, embed, image size).
CLIP = {
    'b32': (32, 768, 12, 12, 3072, 512, 12, 8, 2048, 512, 224),
    'b16': (16, 768, 12, 12, 3072, 512, 12, 8, 2048, 512, 224),
    'l14': (14, 1024, 24, 16, 4096, 768, 12, 12, 3072, 768, 224),
    'l14_336': (14, 1024, 24, 16, 4096, 768, 12, 12, 3072, 768, 336),
}
SIGLIP = {
    'b16': (16, 768, 12, 12, 3072, 768, 12, 12, 3072, 768, 224),
    'so400m': (14, 1152, 27, 16, 4304, 1152, 27, 16, 4304, 1152, 224),
}
SIZE_ORDER = ('patch', 'image_width', 'image_depth', 'image_heads', 'image_mlp', 'text_width',
              'text_depth', 'text_heads', 'text_mlp', 'embed_dim')


def sizes(config) -> tuple:
  size = model_size(config.model)
  return tuple(size[key] for key in SIZE_ORDER) + (config.model.image_size,)


@pytest.mark.parametrize('name', list(CLIP))
def test_clip_variant_has_openclips_architecture_and_clips_recipe(name):
  config = load_config_file(f'configs/clip.py:{name}')
  check_training(config, 8, 1)
  assert sizes(config) == CLIP[name]
  assert (config.model.vocab_size, config.model.context_length) == (49_408, 77)
  assert config.model.text_causal and config.model.image_ln_pre
  assert (config.model.image_pool, config.model.activation) == ('cls', 'gelu')
  assert config.batch_size == 32_768 and config.total_steps == 390_625
  optim = config.optim
  assert optim.lr == (4e-4 if name.startswith('l14') else 5e-4)
  assert (optim.name, optim.b1, optim.b2, optim.eps, optim.weight_decay) == (
      'adamw', 0.9, 0.98, 1e-6, 0.2)
  assert (optim.warmup_steps, optim.decay, optim.end_lr_ratio) == (2_000, 'cosine', 0.0)
  assert config.loss.name == 'softmax'
  assert math.isclose(config.loss.init_logit_scale, 1 / 0.07) and config.loss.max_logit_scale == 100
  assert config.data.resize == config.model.image_size


@pytest.mark.parametrize('name', list(SIGLIP))
def test_siglip_variant_has_big_visions_sizes_and_sigmoid_init(name):
  config = load_config_file(f'configs/siglip.py:{name}')
  check_training(config, 8, 1)
  assert sizes(config) == SIGLIP[name]
  assert config.model.context_length == {'b16': 64, 'so400m': 16}[name]
  assert (config.model.vocab_size, config.model.text_causal, config.model.image_pool) == (
      32_000, False, 'map')
  loss = config.loss
  assert (loss.name, loss.impl, loss.init_logit_bias, loss.max_logit_scale) == (
      'sigmoid', 'ring', -10.0, 0.0)
  assert math.log(loss.init_logit_scale) == pytest.approx(math.log(10))  # t' = log 10
  assert (config.optim.b2, config.optim.lr, config.batch_size) == (0.95, 1e-3, 32_768)
  # big_vision's decoupled wd 1e-4 equals AdamW's lr * weight_decay at the peak lr.
  assert config.optim.lr * config.optim.weight_decay == pytest.approx(1e-4)


def test_the_default_variant_is_b16():
  assert sizes(load_config_file('configs/clip.py')) == CLIP['b16']
  assert sizes(load_config_file('configs/siglip.py')) == SIGLIP['b16']


@pytest.mark.parametrize('spec', ['configs/clip.py:h14', 'configs/siglip.py:g14'])
def test_an_unknown_variant_is_a_one_line_error(spec):
  with pytest.raises((ConfigError, ValueError)) as error:
    load_config_file(spec)
  assert 'known:' in str(error.value) and '\n' not in str(error.value)


# OpenCLIP's docs/model_profile.csv: forward GFLOPs per image-text pair (image + text towers).
OPENCLIP_GFLOPS = {'b32': 14.78, 'b16': 41.09, 'l14': 175.33, 'l14_336': 395.22}


@pytest.mark.parametrize('name', list(OPENCLIP_GFLOPS))
def test_the_benchmarks_analytic_flops_match_openclips_profile(name):
  from benchmarks.accelerator import model_flops_per_chip
  config = load_config_file(f'configs/clip.py:{name}')
  forward = model_flops_per_chip(config, per_chip=1, chips=1) / 3  # training = 3 x forward
  assert forward / 1e9 == pytest.approx(OPENCLIP_GFLOPS[name], rel=0.01)
