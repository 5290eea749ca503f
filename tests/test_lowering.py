"""The real train step of every config file lowers for cpu, cuda and tpu, without the hardware.

Each case builds the step as the trainer would for a documented combination (dtype, scanned or
unrolled layers, remat policy, loss, gradient caching, mesh) and lowers it for the three platforms
(pretrain/step/lowering.py). Every case must lower, donate the whole old state, and hold no host
callback and no custom call its platform cannot run. The demo config takes a pairwise covering of
those settings (every pair of values of any two settings appears in some case); every other config
file variant is lowered in tests/test_lowering_configs.py.
"""

import itertools
import os
import subprocess
import sys

import pytest

from data.errors import ConfigError
from pretrain.config import validate
from pretrain.config.cli import load_config_file
from pretrain.parallel import sharding
from pretrain.step.lowering import PLATFORMS, lower_step
from tests.helpers import ROOT
from tests.lowering_cases import case_config, expected_attention, lit_base  # noqa: F401

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
CASES = [('configs/demo.py', case) for case in PAIRWISE]


def test_pairwise_cases_cover_every_pair_and_the_bf16_scan_combination():
  wanted = set().union(*(pairs_of(dict(zip(SETTINGS, values)))
                         for values in itertools.product(*SETTINGS.values())))
  assert set().union(*(pairs_of(case) for case in PAIRWISE)) == wanted
  assert len(PAIRWISE) < 20  # against 144 for every combination
  # The combination the README recommends for accelerators (and that once failed to build).
  assert any(c['dtype'] == 'bfloat16' and c['scan'] for c in PAIRWISE)


@pytest.mark.parametrize('spec,case', CASES, ids=[f'{spec}-{case}' for spec, case in CASES])
def test_step_lowers_for_every_platform(spec, case, lit_base):
  config = case_config(spec, case, lit_base)
  shape = validate.check_training(config, 8, 1)
  lowered = lower_step(config, sharding.make_mesh(shape), PLATFORMS)
  assert [step.platform for step in lowered] == list(PLATFORMS)
  for step in lowered:
    assert step.problems() == [], (step.platform, step.problems())
    assert step.state_leaves > 10 and step.ops > 100
    assert step.attention == expected_attention(step.platform, config.model.dtype)


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
  assert lines[0].endswith('ops, attention: xla here, cudnn on a GPU)')
  assert lines[1].endswith('ops, attention: splash)')
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
