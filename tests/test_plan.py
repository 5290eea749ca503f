"""`python -m pretrain.plan`: ahead-of-time figures of the train step for a mesh."""

import os
import subprocess
import sys

from configs.common import base_config
from pretrain.plan import plan
from tests.helpers import ROOT


def _demo(**model):
  config = base_config()
  config.model.update(model)
  return config


def test_fsdp_divides_parameter_and_optimizer_bytes():
  replicated = plan(_demo(), {'data': 8, 'fsdp': 1})
  sharded = plan(_demo(), {'data': 2, 'fsdp': 4})
  assert replicated['params'] == sharded['params'] > 1_000_000
  assert replicated['param_bytes'] >= 4 * replicated['params']  # fp32, all of it on each device
  assert sharded['param_bytes'] < 0.3 * replicated['param_bytes']
  assert sharded['opt_state_bytes'] < 0.3 * replicated['opt_state_bytes']
  assert sharded['per_device_batch'] == replicated['per_device_batch'] == 16
  assert sharded['flops_per_device'] > 0 and sharded['temp_bytes'] > 0


def test_levers_shrink_the_temporaries_but_not_the_model_flops():
  config = _demo()
  config.batch_size = 256
  whole = plan(config, {'data': 8, 'fsdp': 1})
  config.accum_steps = 4
  config.model.update(dict(scan_layers=True, image_remat='full'))
  config.loss.impl = 'tiled'
  levered = plan(config, {'data': 8, 'fsdp': 1})
  assert levered['micro_batch_per_device'] == 8 and whole['micro_batch_per_device'] == 32
  assert levered['temp_bytes'] < 0.5 * whole['temp_bytes']
  # Model FLOPs do not depend on how the step is scheduled (XLA counts a loop body only once).
  assert levered['flops_per_device'] == whole['flops_per_device']


def _run_plan(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'pretrain.plan', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_prints_the_plan_and_one_line_errors():
  result = _run_plan('--config', 'configs/demo.py', '--mesh', 'data=2,fsdp=2',
                     '--config.model.scan_layers=True')
  assert result.returncode == 0, result.stderr[-2000:]
  assert "mesh {'data': 2, 'fsdp': 2} (4 devices)" in result.stdout
  assert 'scan_layers=True' in result.stdout and 'model FLOPs/step' in result.stdout
  bad = _run_plan('--config', 'configs/demo.py', '--mesh', 'data=2,model=4')
  assert bad.returncode == 2
  assert bad.stderr.strip() == ("error: --mesh 'data=2,model=4': unknown axes ['model']; "
                                'the axes are data, fsdp')
