"""Benchmark scripts run end to end at CI sizes (no timing assertions)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.parametrize('module, args', [
    ('benchmarks.train_throughput', ['--config', 'tiny', '--smoke', '--steps', '2']),
    ('benchmarks.retrieval_metrics', ['--smoke']),
    ('benchmarks.search', ['--smoke']),
    ('benchmarks.input_pipeline', ['--smoke']),
    ('benchmarks.loss_memory', ['--smoke']),
    ('benchmarks.grad_cache', ['--smoke']),
    ('benchmarks.vs_openclip', ['--config', 'tiny', '--smoke', '--rounds', '1', '--steps', '2']),
    ('benchmarks.bf16_curve', ['--smoke']),
    ('benchmarks.matryoshka', ['--smoke', '--dims', '16,32']),
    ('benchmarks.profile_step', ['--config', 'tiny', '--smoke']),
    ('benchmarks.refault', ['--smoke']),
    # cuDNN attention is refused on CPU: its row is skipped (a one-line reason), the auto row runs.
    ('benchmarks.accelerator', ['--smoke', '--dtypes', 'bfloat16', '--attention', 'auto,cudnn']),
])
def test_benchmark_smoke(tmp_path, module, args):
  out = tmp_path / 'result.json'
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  result = subprocess.run([sys.executable, '-m', module, *args, '--out', str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = json.loads(out.read_text())['results']
  assert rows and all(v not in (None, '') for row in rows for v in row.values())
