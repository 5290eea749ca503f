"""Host memory: glibc's huge-page malloc for training processes, freed heap returned to the OS."""

import os
import subprocess
import sys

import pytest

from pretrain.backends.cpu import host_memory
from pretrain.backends.cpu.host_memory import HUGE_PAGE_TUNABLE, huge_page_malloc_env
from tests.helpers import ROOT, resident_bytes

HUGE_PAGES_WORK = host_memory.huge_page_env_here({}) is not None
needs_huge_pages = pytest.mark.skipif(not HUGE_PAGES_WORK,
                                      reason='needs glibc >= 2.35 and transparent huge pages')


def _env(**changes) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('GLIBC_TUNABLES', None)
  env.pop('XLA_FLAGS', None)
  env.update(changes)
  return env


def test_huge_page_env_adds_the_tunable_and_keeps_the_users_others():
  env = huge_page_malloc_env({'A': '1'}, (2, 36), 'madvise')
  assert env == {'A': '1', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  env = huge_page_malloc_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, (2, 35), 'always')
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


@pytest.mark.parametrize('environ, glibc, thp', [
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, (2, 36), 'madvise'),  # the user's choice
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, (2, 36), 'madvise'),  # restarted already
    ({}, (2, 34), 'madvise'),  # glibc without the tunable
    ({}, None, 'madvise'),  # not glibc (musl, macOS)
    ({}, (2, 36), 'never'),  # huge pages switched off in the kernel
    ({}, (2, 36), None),  # no transparent huge pages at all
])
def test_huge_page_env_is_none_where_set_already_or_useless(environ, glibc, thp):
  assert huge_page_malloc_env(environ, glibc, thp) is None


def _show_and_run(module: str) -> str:
  """Python code that prints its pid and tunables, then runs `module` as `python -m` would."""
  return ('import os, runpy, sys; '
          'print("pid", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True); '
          f'sys.argv = ["{module}"]; '
          f'runpy.run_module("{module}", run_name="__main__")')


# Every entry point that runs compiled steps or embeddings, and the one-line error it gives when run
# without flags (so the test sees the command itself ran, after the restart).
ENTRY_POINTS = [('pretrain.train', 'error: --config is required'),
                ('eval.zeroshot', 'required: --workdir, --dataset'),
                ('eval.retrieval', 'required: --workdir, --dataset')]


@needs_huge_pages
@pytest.mark.parametrize('module, error', ENTRY_POINTS)
def test_entry_point_restarts_itself_once_with_huge_page_malloc(module, error):
  """Same process (pid), same command, run again with the tunable; then the command proper."""
  result = subprocess.run([sys.executable, '-c', _show_and_run(module)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
  lines = result.stdout.split('\n')[:-1]
  assert len(lines) == 2, result.stdout
  (_, pid_before, before), (_, pid_after, after) = (line.split() for line in lines)
  assert (pid_before, before) == (pid_after, 'None') and after == HUGE_PAGE_TUNABLE + '=1'
  assert result.returncode == 2 and result.stderr.endswith(error + '\n'), result.stderr


@pytest.mark.parametrize('module, error', ENTRY_POINTS)
def test_entry_point_leaves_a_users_setting_alone(module, error):
  result = subprocess.run([sys.executable, '-c', _show_and_run(module)], cwd=ROOT,
                          env=_env(GLIBC_TUNABLES=HUGE_PAGE_TUNABLE + '=0'),
                          capture_output=True, text=True, timeout=120)
  assert result.stdout.split() == ['pid', result.stdout.split()[1], HUGE_PAGE_TUNABLE + '=0']
  assert result.returncode == 2 and result.stderr.endswith(error + '\n'), result.stderr


@pytest.mark.parametrize('module, error', ENTRY_POINTS)
def test_entry_point_does_not_restart_where_jax_will_run_on_an_accelerator(module, error):
  """JAX_PLATFORMS naming a GPU/TPU (as a plugin or device node would): no re-exec at all."""
  result = subprocess.run([sys.executable, '-c', _show_and_run(module)], cwd=ROOT,
                          env=_env(JAX_PLATFORMS='tpu'), capture_output=True, text=True,
                          timeout=120)
  assert result.stdout.split() == ['pid', result.stdout.split()[1], 'None']
  assert result.returncode == 2 and result.stderr.endswith(error + '\n'), result.stderr


def test_restart_applies_only_off_accelerator_hosts():
  assert not host_memory.huge_page_restart_applies({'JAX_PLATFORMS': 'cuda'})
  assert host_memory.huge_page_restart_applies({'JAX_PLATFORMS': 'cpu'})


_XLA_STEP_FAULTS = '''
import hashlib, resource, jax, jax.numpy as jnp, numpy as np
x = jax.random.normal(jax.random.key(0), (256, 65, 1024))  # 68 MB: XLA's output block is
step = jax.jit(lambda a: jnp.tanh(2 * a + 1))                # mmapped afresh on every call
step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  y = step(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4
print(faults, hashlib.sha256(np.asarray(y).tobytes()).hexdigest())
'''


@needs_huge_pages
def test_huge_page_malloc_cuts_the_page_faults_of_xla_buffers():
  """The mechanism behind the speed-up (benchmarks/README.md): 4 KiB faults on every fresh block."""
  def faults_and_digest(setting: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, '-c', _XLA_STEP_FAULTS], cwd=ROOT, check=True,
                            env=_env(GLIBC_TUNABLES=f'{HUGE_PAGE_TUNABLE}={setting}'),
                            capture_output=True, text=True, timeout=120)
    faults, digest = result.stdout.split()
    return int(faults), digest
  (small_pages, digest), (huge_pages, huge_digest) = faults_and_digest('0'), faults_and_digest('1')
  assert small_pages >= 68_000_000 // 4096 * 0.9, small_pages  # one fault per 4 KiB page
  assert huge_pages <= small_pages // 8, (small_pages, huge_pages)
  assert huge_digest == digest  # where the memory comes from changes no result, bit for bit


def test_release_freed_memory_returns_heap_pages_to_the_os():
  """What compilation frees (many small heap blocks) leaves the RSS after the release."""
  blocks = [bytes(4000) for _ in range(50_000)]  # 200 MB of malloc'd (not mmapped) blocks
  survivor = bytes(4000)  # allocated last, so the freed pages are not at the heap's top
  before = resident_bytes() // 2**20
  del blocks
  assert host_memory.release_freed_memory()
  assert resident_bytes() // 2**20 <= before - 150, (before, resident_bytes() // 2**20)
  del survivor
