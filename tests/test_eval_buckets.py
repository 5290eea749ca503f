"""Offline eval jobs and weight import/export on a run kept in a gs:// bucket (a real GCS API
emulator on 127.0.0.1, tests/emulators.py): the same numbers as on local disk, results written into
the bucket, --watch following checkpoints that appear there, exports to gs:// and s3://."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data import storage
from data.errors import ConfigError
from eval import zeroshot
from pretrain.runtime.checkpoint import check_checkpoint_location, complete_steps, restore_params
from eval.job import watch
from eval.run_model import RunModel
from pretrain import import_weights
from pretrain.models.param_paths import named_leaves
from pretrain.export_weights import export_weights
from tests import interop_probe
from tests.helpers import ROOT, tb_events
from tests.test_eval_jobs import run_dir  # noqa: F401  (the trained demo run, a module fixture)

COMMIT_FILE = 'commit_success.txt'  # orbax's mark of a complete checkpoint on GCS


def upload(local, url: str, skip: tuple[str, ...] = ()) -> None:
  """Copies a local folder into a bucket prefix, as `gsutil cp -r` would; a checkpoint's commit
  file goes last, so a reader never sees a checkpoint complete before its arrays are there."""
  files = []
  for folder, dirs, names in os.walk(local):
    dirs[:] = [d for d in dirs if d not in skip]
    files += [os.path.join(folder, name) for name in names]
  for path in sorted(files, key=lambda p: os.path.basename(p) == COMMIT_FILE):
    relative = os.path.relpath(path, local).replace(os.sep, '/')
    with open(path, 'rb') as f:
      storage.write_bytes(storage.join(url, relative), f.read())


def rmtree(url: str) -> None:
  """Deletes every object under a bucket prefix."""
  fs, inner = storage.filesystem(url)
  fs.rm(inner, recursive=True)


def result(folder_parent: str, name: str, step: int) -> tuple[str, dict]:
  """(the results folder's name, step_<step>.json) of the one RUN/eval/<kind>/<name>-<hash>/."""
  [folder] = [n for n in storage.listdir(folder_parent) if n.startswith(f'{name}-')]
  return folder, json.loads(storage.read_text(storage.join(folder_parent, folder,
                                                           f'step_{step}.json')))


def _metrics(saved: dict) -> dict:
  """The numbers of a result file (its timing and how the flags were typed left out)."""
  return {k: v for k, v in saved.items() if k not in ('wall_s', 'given')}


def _scalars(folder: str, scratch) -> dict:
  """{tag: value} of the TensorBoard events files in a results folder (local or in a bucket),
  wall-clock timing left out."""
  scratch.mkdir(parents=True)
  for name in storage.listdir(folder):
    if name.startswith('events.out.tfevents.'):
      (scratch / name).write_bytes(storage.read_bytes(storage.join(folder, name)))
  return {tag: value for _, tag, value in tb_events(scratch) if not tag.endswith('/wall_s')}


def _job(module: str, workdir: str, dataset: str, *flags: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  cmd = [sys.executable, '-m', module, '--workdir', workdir, '--dataset', dataset, '--once',
         '--batch_size', '64', *flags]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def names(tmp_path_factory):
  """Class names (the shapes' own, reworded) and templates: local files and their gs:// copies."""
  from data.shapes import ShapesSource
  local = tmp_path_factory.mktemp('names')
  classes = [f'{name} shape' for name in ShapesSource('zeroshot', 16, size=1).classnames]
  (local / 'classnames.txt').write_text('\n'.join(classes) + '\n')
  (local / 'templates.txt').write_text('a photo of a {c}\na drawing of a {c}\n')
  return local


@pytest.mark.slow
def test_cli_jobs_on_a_gs_run_match_the_local_copy(run_dir, names, gcs, tmp_path):  # noqa: F811
  local = tmp_path / 'run'
  shutil.copytree(run_dir, local, ignore=shutil.ignore_patterns('eval'))
  bucket = gcs.bucket('eval-cli')
  upload(names, storage.join(bucket, 'names'))
  run = storage.join(bucket, 'run')
  upload(local, run)
  zeroshot_flags = {'local': ('--classnames', str(names / 'classnames.txt'),
                              '--templates', str(names / 'templates.txt')),
                    'gs': ('--classnames', f'{bucket}/names/classnames.txt',
                           '--templates', f'{bucket}/names/templates.txt')}
  for where, workdir in (('local', str(local)), ('gs', run)):
    for module, dataset, flags in (('eval.zeroshot', 'shapes:zeroshot', zeroshot_flags[where]),
                                   ('eval.retrieval', 'shapes:retrieval', ())):
      done = _job(module, workdir, dataset, *flags)
      assert done.returncode == 0, done.stderr[-2000:]
      kind = module.split('.')[1]
      assert f'results in {storage.join(workdir, "eval", kind)}' in done.stdout
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))  # no local folder named after the URL
  for kind, name in (('zeroshot', 'shapes_zeroshot'), ('retrieval', 'shapes_retrieval')):
    here_folder, here = result(str(local / 'eval' / kind), name, 6)
    there_folder, there = result(storage.join(run, 'eval', kind), name, 6)
    # Same settings hash (so the same folder name), same numbers, to the last digit.
    assert there_folder == here_folder and _metrics(there) == _metrics(here)
    assert here['step'] == 6 and here['num_examples'] > 0
    assert 'settings.json' in storage.listdir(storage.join(run, 'eval', kind, there_folder))
    # TensorBoard scalars in the bucket: the local run's, timing apart.
    scalars = [_scalars(storage.join(folder, kind, here_folder), tmp_path / where / kind)
               for where, folder in (('local', str(local / 'eval')), ('gs', f'{run}/eval'))]
    assert scalars[1] == scalars[0] and f'{kind}/{name}/num_examples' in scalars[0]
    key = 'acc1' if kind == 'zeroshot' else 'image_retrieval_mean_rank'
    assert scalars[1][f'{kind}/{name}/{key}'] == pytest.approx(here[key], rel=1e-6)
  assert there['given']['dataset'] == 'shapes:retrieval'


def test_watch_on_a_gs_run_follows_new_and_deleted_checkpoints(run_dir, gcs, tmp_path):  # noqa: F811
  bucket = gcs.bucket('eval-watch')
  run = storage.join(bucket, 'run')
  upload(run_dir, run, skip=('eval', '4', '6'))  # at first only checkpoint 2 is complete
  ckpts = storage.join(run, 'checkpoints')
  # A checkpoint still being written on GCS has no commit file: not complete yet.
  upload(run_dir / 'checkpoints' / '6' / 'params', storage.join(ckpts, '8', 'params'))
  assert complete_steps(run) == [2]
  args = zeroshot.parse(['--workdir', run, '--dataset', 'shapes:zeroshot', '--templates', 'shapes',
                         '--watch', '--batch_size', '64'])
  outputs, evaluate = zeroshot.make_job(args)
  calls = []

  def evaluate_and_move_things(step):
    calls.append(step)
    if step == 2:  # While watching: checkpoints 4 and 6 appear in the bucket...
      for later in ('4', '6'):
        upload(run_dir / 'checkpoints' / later, storage.join(ckpts, later))
    if step == 4:  # ...and keep-N deletes 4 before it is read.
      rmtree(storage.join(ckpts, '4'))
    return evaluate(step)

  evaluated = watch(run, outputs, evaluate_and_move_things, poll_seconds=0.01, max_polls=5)
  assert evaluated == [2, 6] and calls == [2, 4, 6]
  _, saved = result(storage.join(run, 'eval', 'zeroshot'), 'shapes_zeroshot', 6)
  assert saved['step'] == 6 and saved['num_examples'] == 960 and 0 <= saved['acc1'] <= 1
  assert storage.is_file(storage.join(outputs.folder, 'step_6_confusion.json'))
  # A restarted job finds everything done in the bucket and exits without evaluating again.
  assert watch(run, outputs, evaluate_and_move_things, poll_seconds=0.01, max_polls=5) == []
  assert calls == [2, 4, 6]


def test_export_to_gs_and_s3_and_import_back_give_identical_params(gcs, s3, tmp_path):
  local = tmp_path / 'probe'
  interop_probe.make_probe_workdir(str(local / 'workdir'))
  bucket = gcs.bucket('interop')
  upload(local / 'workdir', f'{bucket}/workdir')
  export_weights(str(local / 'workdir'), None, 'openclip', str(local / 'openclip'))
  export_weights(f'{bucket}/workdir', None, 'openclip', f'{bucket}/openclip')
  s3_bucket = s3.bucket('exports')
  export_weights(f'{bucket}/workdir', None, 'hf', f'{s3_bucket}/hf')
  export_weights(str(local / 'workdir'), None, 'hf', str(local / 'hf'))
  for folder, weights in (('openclip', 'open_clip_model.safetensors'), ('hf', 'model.safetensors')):
    there = f'{bucket}/openclip' if folder == 'openclip' else f'{s3_bucket}/hf'
    assert storage.read_bytes(f'{there}/{weights}') == (local / folder / weights).read_bytes()
    assert storage.read_text(f'{there}/tokenizer.json') == (local / folder /
                                                            'tokenizer.json').read_text()
  tokenizer = f'clip_bpe:{interop_probe.BPE}'
  import_weights.import_weights('openclip', str(local / 'openclip' / 'open_clip_model.safetensors'),
                                str(local / 'openclip' / 'open_clip_config.json'),
                                str(local / 'back'), tokenizer)
  import_weights.import_weights('openclip', f'{bucket}/openclip/open_clip_model.safetensors',
                                f'{bucket}/openclip/open_clip_config.json', f'{bucket}/back',
                                tokenizer)
  assert complete_steps(f'{bucket}/back') == [0]
  imported = json.loads(storage.read_text(f'{bucket}/back/imported.json'))
  assert imported['weights'] == f'{bucket}/openclip/open_clip_model.safetensors'
  here = restore_params(str(local / 'back'), None, RunModel(str(local / 'back')).abstract_params)
  there = restore_params(f'{bucket}/back', None, RunModel(f'{bucket}/back').abstract_params)
  assert here[0] == there[0] == 0
  flat_here, flat_there = (named_leaves(p[1]) for p in (here, there))
  assert sorted(flat_here) == sorted(flat_there)
  for name, value in flat_here.items():
    np.testing.assert_array_equal(np.asarray(flat_there[name]), np.asarray(value), err_msg=name)


def test_s3_workdir_and_missing_bucket_are_one_line_errors(gcs):
  with pytest.raises(ConfigError, match='cannot read or write checkpoints in s3://') as info:
    check_checkpoint_location('s3://some-bucket/run')
  assert '\n' not in str(info.value)
  with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
    RunModel('gs://no-such-bucket/run')


def test_half_precision_weights_in_a_bucket_read_as_the_local_file(gcs, tmp_path):
  import jax.numpy as jnp
  from safetensors.flax import save_file
  from pretrain.interop.common import read_safetensors
  values = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
  save_file({'bf16': jnp.asarray(values, jnp.bfloat16), 'fp16': jnp.asarray(values, jnp.float16),
             'ids': jnp.arange(3)}, str(tmp_path / 'half.safetensors'))
  url = f'{gcs.bucket("half-weights")}/half.safetensors'
  storage.write_bytes(url, (tmp_path / 'half.safetensors').read_bytes())
  here, there = read_safetensors(str(tmp_path / 'half.safetensors')), read_safetensors(url)
  assert sorted(here) == sorted(there) == ['bf16', 'fp16', 'ids']
  for name, value in here.items():
    assert there[name].dtype == np.float32
    np.testing.assert_array_equal(there[name], value)
