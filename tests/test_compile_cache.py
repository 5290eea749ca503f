"""The persistent compilation cache: a resumed run loads every program it compiled from disk."""

import json
import os
import subprocess
import sys

from pretrain.runtime.compile_cache import cache_dir
from tests.helpers import ROOT

FAST = ['--config.model.image_size=16', '--config.model.context_length=12',
        '--config.batch_size=16', '--config.optim.warmup_steps=1', '--config.log_every=1',
        '--config.eval.zeroshot=', '--config.total_steps=2', '--config.exit_after_step=1']
# The trainer's main() with jax's own cache events counted (jax.monitoring), printed as json.
COUNTING = """import collections, json, sys, jax.monitoring
events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name]))
from pretrain.train import main
rc = main(sys.argv[1:])
print(json.dumps({'rc': rc, 'hits': events['/jax/compilation_cache/cache_hits'],
                  'misses': events['/jax/compilation_cache/cache_misses']}))
"""


def counted_run(workdir, *overrides) -> dict:
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'PYTHONPATH': ROOT}
  result = subprocess.run([sys.executable, '-c', COUNTING, '--config', 'configs/demo.py',
                           '--workdir', str(workdir), *FAST, *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_the_resumed_demo_compiles_from_the_cache(tmp_path):
  first = counted_run(tmp_path)  # stops after step 1, as if preempted
  assert first == {'rc': 0, 'hits': 0, 'misses': first['misses']} and first['misses'] > 0
  entries = os.listdir(tmp_path / 'compile_cache')
  assert any(name.startswith('jit__step-') for name in entries)  # the train step itself
  second = counted_run(tmp_path)  # the same command resumes to step 2
  assert second == {'rc': 0, 'hits': second['hits'], 'misses': 0} and second['hits'] > 0


def test_off_compiles_everything_again(tmp_path):
  off = counted_run(tmp_path, '--config.compile_cache_dir=')
  assert (off['hits'], off['misses']) == (0, 0)  # jax never consulted a cache
  assert not os.path.exists(tmp_path / 'compile_cache')


def test_where_the_cache_lives():
  assert cache_dir('auto', '/runs/a') == '/runs/a/compile_cache'
  assert cache_dir('', '/runs/a') is None
  assert cache_dir('/fast/cache', '/runs/a') == '/fast/cache'
  assert cache_dir('auto', 'gs://b/run/') == 'gs://b/run/compile_cache'  # jax writes it via epath
