"""The one backend selection: CPU mechanisms on the CPU only, stock ops and whole batches elsewhere."""

import json

import pytest

from configs.common import base_config
from data.errors import ConfigError
from pretrain.backends import resolve_for_platform, will_run_on_accelerator


@pytest.mark.parametrize('platform, ops, chunks, prefault', [
    ('cpu', 'cpu', 0, True), ('gpu', 'stock', 1, False), ('cuda', 'stock', 1, False),
    ('tpu', 'stock', 1, False)])
def test_auto_resolves_to_the_cpu_mechanisms_on_the_cpu_only(platform, ops, chunks, prefault):
  config = base_config()
  resolved = resolve_for_platform(config, platform)
  assert (resolved.model.ops, resolved.tower_batch_chunks, resolved.prefault_step_memory) == (
      ops, chunks, prefault)
  assert config.model.ops == 'auto' and config.prefault_step_memory  # the original is untouched
  assert resolve_for_platform(resolved, platform).to_dict() == resolved.to_dict()  # idempotent


def test_explicit_choices_that_apply_are_kept():
  config = base_config()
  config.model.ops, config.tower_batch_chunks, config.prefault_step_memory = 'stock', 4, False
  on_cpu = resolve_for_platform(config, 'cpu')
  assert (on_cpu.model.ops, on_cpu.tower_batch_chunks, on_cpu.prefault_step_memory) == (
      'stock', 4, False)
  config.tower_batch_chunks = 1
  assert resolve_for_platform(config, 'tpu').tower_batch_chunks == 1


@pytest.mark.parametrize('field, value, message', [
    ('ops', 'cpu', "model.ops 'cpu' is the XLA:CPU op set; platform 'cuda' runs 'stock' (or 'auto')"),
    ('ops', 'fast', 'unknown model.ops \'fast\'; known: auto, stock, cpu'),
    ('tower_batch_chunks', 4, "tower_batch_chunks 4: tower slices are an XLA:CPU mechanism; "
                              "platform 'cuda' runs the whole batch (0 or 1)"),
])
def test_cpu_only_choices_on_an_accelerator_are_one_line_errors(field, value, message):
  config = base_config()
  if field == 'ops':
    config.model.ops = value
  else:
    config[field] = value
  with pytest.raises(ConfigError) as error:
    resolve_for_platform(config, 'cuda')
  assert str(error.value) == message


def test_validation_names_an_unknown_op_set():
  from pretrain.config.validate import check_model
  config = base_config()
  config.model.ops = 'lean'
  with pytest.raises(ConfigError) as error:
    check_model(config.model)
  assert str(error.value) == "unknown model.ops 'lean'; known: auto, stock, cpu"


def test_a_saved_config_without_the_field_loads_as_auto(tmp_path):
  from pretrain.config.cli import load_saved_config
  saved = base_config().to_dict()
  del saved['model']['ops']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert load_saved_config(str(tmp_path / 'config.json')).model.ops == 'auto'


@pytest.mark.parametrize('environ, modules, devices, expected', [
    ({}, (), (), False),                                     # a CPU host
    ({}, ('jax_cuda12_plugin',), (), True),                  # jax's CUDA plugin installed
    ({}, ('libtpu',), (), True),                             # a TPU VM's runtime
    ({}, (), ('/dev/nvidia0',), True),                       # a GPU without a plugin found
    ({}, (), ('/dev/accel0',), True),                        # a TPU device node
    ({'JAX_PLATFORMS': 'cpu'}, ('jax_cuda12_plugin',), ('/dev/nvidia0',), False),  # CPU asked for
    ({'JAX_PLATFORMS': 'cuda,cpu'}, (), (), True),
    ({'JAX_PLATFORMS': 'tpu'}, (), (), True),
])
def test_accelerator_hosts_are_recognised_before_jax_loads(environ, modules, devices, expected):
  find_spec = lambda name: object() if name in modules else None
  assert will_run_on_accelerator(environ, find_spec, lambda path: path in devices) is expected


def test_step_builder_resolves_once_for_the_platform_it_builds_for():
  """A step built on this CPU for a TPU (plan, lowering) gets the TPU's choices, not the host's."""
  import jax
  from flax import nnx

  from pretrain.backends.cpu import ops as cpu_ops
  from pretrain.models import ops as stock_ops
  from pretrain.step.optim import make_optimizer
  from pretrain.step.train_step import StepBuilder
  from tests.helpers import mesh, tiny_config

  config = tiny_config()  # everything auto
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  builders = {platform: StepBuilder(config, mesh(8, 1), tx, schedule, platform=platform)
              for platform in (None, 'tpu')}
  on_cpu, for_tpu = builders[None], builders['tpu']
  assert on_cpu.platform == 'cpu' and for_tpu.platform == 'tpu'
  assert (on_cpu.config.model.ops, for_tpu.config.model.ops) == ('cpu', 'stock')
  assert (on_cpu.tower_chunks(8 * 64), for_tpu.tower_chunks(8 * 64)) == (4, 1)
  assert on_cpu.config.prefault_step_memory and not for_tpu.config.prefault_step_memory
  dense_type = lambda b: type(nnx.merge(b.graphdef, b.abstract_state['params']).img.patch_embed)
  assert dense_type(on_cpu) is cpu_ops.Linear and dense_type(for_tpu) is stock_ops.Linear
  assert jax.tree.structure(on_cpu.abstract_state) == jax.tree.structure(for_tpu.abstract_state)
