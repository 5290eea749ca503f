"""Benchmark scripts run end to end at CI sizes (no timing assertions)."""

import json
import os
import subprocess
import sys
import tarfile

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


def test_data_scale_smoke(tmp_path):
  """The synthetic corpus reads back member by member, and every figure is reported for it
  (local disk only: the emulator's rows would add two more trainer-like processes)."""
  from benchmarks import wds_synth  # pylint: disable=import-outside-toplevel
  out, corpus = tmp_path / 'result.json', tmp_path / 'corpus'
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  result = subprocess.run([sys.executable, '-m', 'benchmarks.data_scale', '--smoke', '--skip_gcs',
                           '--corpus_dir', str(corpus), '--json', str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  with tarfile.open(corpus / 'wds' / wds_synth.shard_name(1)) as tar:
    members = tar.getmembers()
    assert [m.name for m in members[:2]] == ['0000000020.png', '0000000020.txt']
    assert len(members) == 40
    assert tar.extractfile(members[3]).read() == wds_synth.caption(21)
    assert tar.extractfile(members[2]).read() == wds_synth.tiny_pngs()[21]
  payload = json.loads(out.read_text())
  (row,) = payload['results']
  assert (row['storage'], row['shards'], row['samples']) == ('local', 3, 60)
  assert row['examples_per_s'] > 0 and isinstance(row['index_bytes_per_sample'], float)
  assert [e['samples'] for e in payload['extrapolated']] == ['400M', '1.8B']
