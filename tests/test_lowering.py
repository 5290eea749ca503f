"""The real train step of every config file lowers for cpu, cuda and tpu, without the hardware.

Each case builds the step as the trainer would for a documented combination (dtype, scanned or
unrolled layers, remat policy, loss, gradient caching, mesh) and lowers it for the three platforms
(pretrain/step/lowering.py). Every case must lower, donate the whole old state, and hold no host
callback and no custom call its platform cannot run. The demo config takes a pairwise covering of
those settings (every pair of values of any two settings appears in some case); every other config
file variant is lowered as written and with its levers pulled.
"""

import itertools
import os
import subprocess
import sys

import pytest

from configs.common import base_config
from data.errors import ConfigError
from pretrain.config import validate
from pretrain.config.cli import load_config_file, save_config
from pretrain.parallel import sharding
from pretrain.step.lowering import PLATFORMS, lower_step
from tests.helpers import ROOT

SETTINGS = {
    'dtype': ('float32', 'bfloat16'),
    'scan': (False, True),
    'remat': ('none', 'dots', 'full'),
    'loss': (('softmax', 'local_rows'), ('softmax', 'tiled'), ('sigmoid', 'ring')),
    'accum': (1, 2),
    'mesh': ((8, 1), (4, 2)),  # (data, fsdp) on the 8 simulated devices
}


def pairs_of(case: dict) -> set:
  """The (setting, value) pairs a case covers."""
  items = sorted((name, repr(value)) for name, value in case.items())
  return set(itertools.combinations(items, 2))


def pairwise_cases(settings: dict) -> list[dict]:
  """A small list of cases covering every pair of values of any two settings (greedy)."""
  every = [dict(zip(settings, values)) for values in itertools.product(*settings.values())]
  uncovered = set().union(*(pairs_of(case) for case in every))
  cases = []
  while uncovered:
    best = max(every, key=lambda case: len(pairs_of(case) & uncovered))
    cases.append(best)
    uncovered -= pairs_of(best)
  return cases


PAIRWISE = pairwise_cases(SETTINGS)
# ViT configs other than the demo: as written, then with every lever pulled.
LEVERS = dict(dtype='bfloat16', scan=True, remat='full', loss=('sigmoid', 'ring'), accum=2,
              mesh=(4, 2))
# BatchNorm (EfficientNet) towers take neither scan, remat nor gradient caching (validate refuses).
BATCHNORM_LEVERS = dict(dtype='bfloat16', loss=('softmax', 'tiled'))
CASES = (
    [('configs/demo.py', case) for case in PAIRWISE]
    + [(spec, case) for spec in ('configs/demo.py:tiny', 'configs/clip_vit_b32.py',
                                 'configs/clip_vit_b32.py:shapes', 'lit')
       for case in ({}, LEVERS)]
    + [(spec, case) for spec in ('configs/align.py:tiny', 'configs/align.py:b7',
                                 'configs/align.py:l2') for case in ({}, BATCHNORM_LEVERS)]
)


def test_pairwise_cases_cover_every_pair_and_the_bf16_scan_combination():
  wanted = set().union(*(pairs_of(dict(zip(SETTINGS, values)))
                         for values in itertools.product(*SETTINGS.values())))
  assert set().union(*(pairs_of(case) for case in PAIRWISE)) == wanted
  assert len(PAIRWISE) < 20  # against 144 for every combination
  # The combination the README recommends for accelerators (and that once failed to build).
  assert any(c['dtype'] == 'bfloat16' and c['scan'] for c in PAIRWISE)


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


@pytest.mark.parametrize('spec,case', CASES, ids=[f'{spec}-{case}' for spec, case in CASES])
def test_step_lowers_for_every_platform(spec, case, lit_base):
  config = case_config(spec, case, lit_base)
  shape = validate.check_training(config, 8, 1)
  lowered = lower_step(config, sharding.make_mesh(shape), PLATFORMS)
  assert [step.platform for step in lowered] == list(PLATFORMS)
  for step in lowered:
    assert step.problems() == [], (step.platform, step.problems())
    assert step.state_leaves > 10 and step.ops > 100
    assert step.attention == ('cpu' if step.platform == 'cpu' else 'xla')


def test_problems_name_what_an_accelerator_cannot_run():
  from pretrain.step.lowering import LoweredStep
  fine = LoweredStep('cuda', 10, 'xla', 5, 5, ('Sharding', '__cudnn$fmhaSoftmax'))
  assert fine.problems() == []
  bad = LoweredStep('tpu', 10, 'xla', 5, 3, ('xla_ffi_python_cpu_callback', 'lapack_sgesdd'))
  assert bad.problems() == [
      '3 of 5 state arrays donated', "host callbacks ['xla_ffi_python_cpu_callback']",
      "custom calls ['lapack_sgesdd'] that tpu does not run"]


def _plan(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'pretrain.plan', '--config', 'configs/demo.py',
                         '--mesh', 'data=2', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def test_plan_lower_for_prints_one_line_per_platform():
  result = _plan('--lower_for', 'cuda,tpu', '--config.model.scan_layers=True',
                 '--config.model.dtype=bfloat16')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert [line.split(' (')[0] for line in lines] == ['lowered for cuda: ok', 'lowered for tpu: ok']
  assert all(line.endswith('ops, attention: xla)') for line in lines)
  # The CPU op set on an accelerator is refused for that platform, in one line, exit 1.
  cpu_ops = _plan('--lower_for', 'cpu,cuda', '--config.model.ops=cpu')
  assert cpu_ops.returncode == 1
  cpu_line, cuda_line = cpu_ops.stdout.strip().splitlines()
  assert cpu_line.startswith('lowered for cpu: ok (') and cpu_line.endswith('attention: cpu)')
  assert cuda_line.startswith('lowered for cuda: failed (') and 'model.ops' in cuda_line
  unknown = _plan('--lower_for', 'rocm')
  assert unknown.returncode == 2
  assert unknown.stderr.strip() == "error: --lower_for 'rocm': name platforms among cpu, cuda, tpu"


def test_invalid_combinations_are_refused_before_lowering():
  config = load_config_file('configs/align.py:tiny')
  config.model.scan_layers = True
  with pytest.raises(ConfigError):
    validate.check_training(config, 8, 1)
