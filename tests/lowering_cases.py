"""Configs of the lowering matrix (tests/test_lowering*.py): a config file with a case's settings."""

import pytest

from configs.common import base_config
from pretrain.config.cli import load_config_file, save_config


@pytest.fixture(scope='module')
def lit_base(tmp_path_factory) -> str:
  """A pretrained workdir for configs/lit.py: the demo model's config.json."""
  workdir = tmp_path_factory.mktemp('pretrained')
  save_config(base_config(), str(workdir / 'config.json'))
  return str(workdir)


def case_config(spec: str, case: dict, lit_base: str):
  """The config file's config with the case's settings, a batch small enough to trace quickly."""
  config = load_config_file(f'configs/lit.py:{lit_base}' if spec == 'lit' else spec)
  if 'dtype' in case:
    config.model.dtype = case['dtype']
  if 'scan' in case:
    config.model.scan_layers = case['scan']
    config.model.image_remat = config.model.text_remat = case['remat']
    config.accum_steps = case['accum']
  if 'loss' in case:
    config.loss.name, config.loss.impl = case['loss']
  data, fsdp = case.get('mesh', (8, 1))
  config.mesh.update(dict(data=data, fsdp=fsdp))
  # Two examples per device and micro-batch: the graph, not the batch, is under test.
  config.batch_size = 16 * config.accum_steps
  return config


def expected_attention(platform: str, dtype: str) -> str:
  """What `model.attention='auto'` lowers to here: the CPU set's own, splash on TPU, cuDNN on a
  GPU under bf16 (lowered with XLA on this GPU-less host)."""
  if platform == 'cpu':
    return 'cpu'
  if platform == 'tpu':
    return 'splash'
  return 'xla here, cudnn on a GPU' if dtype == 'bfloat16' else 'xla'
