"""config.log.wandb: a real wandb in offline mode beside the trainer (the run's files, its id kept
across a resume, steps that continue), and the one-line refusal where wandb is not installed."""

import json
import os
import struct
import subprocess
import sys

import pytest

from tests.helpers import ROOT, read_metrics, run_train

TINY = ('--config.model.image_size=16', '--config.model.context_length=8', '--config.batch_size=16',
        '--config.optim.warmup_steps=1', '--config.total_steps=6', '--config.log_every=2',
        '--config.checkpoint_every=2', '--config.log.wandb.project=demo',
        '--config.log.wandb.mode=offline', '--config.log.wandb.name=tiny')
BLOCK = 32768  # the .wandb file is a LevelDB log: 32 KiB blocks of checksummed records


def wandb_records(path):
  """The protobuf records of an offline run's .wandb file, in order."""
  from wandb.proto import wandb_internal_pb2
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:4] == b':W&B'
  at, pending = 7, b''  # after the file header
  while at + 7 <= len(data):
    if BLOCK - at % BLOCK < 7:  # a block's tail too short for a header is padding
      at += BLOCK - at % BLOCK
      continue
    _, length, kind = struct.unpack('<IHB', data[at:at + 7])
    pending += data[at + 7:at + 7 + length]
    at += 7 + length
    if kind in (1, 4):  # a FULL record, or the LAST piece of one
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      pending = b''
      yield record


def offline_run(folder) -> tuple[str, dict[int, dict]]:
  """(run id, step -> the history row logged there) of one offline-run folder."""
  [path] = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith('.wandb')]
  run_ids, history = set(), {}
  for record in wandb_records(path):
    kind = record.WhichOneof('record_type')
    if kind == 'run':
      run_ids.add(record.run.run_id)
    elif kind == 'history':
      row = {item.key or '/'.join(item.nested_key): json.loads(item.value_json)
             for item in record.history.item}
      history.setdefault(row['_step'], {}).update(row)
  [run_id] = run_ids
  return run_id, history


@pytest.mark.slow  # two trainer processes (preempted at step 4, then resumed), ~25 s each
def test_offline_wandb_run_keeps_its_id_and_its_steps_continue_after_a_resume(tmp_path,
                                                                              monkeypatch):
  monkeypatch.setenv('WANDB_DIR', str(tmp_path / 'tracker'))
  monkeypatch.setenv('WANDB_MODE', 'offline')
  workdir = tmp_path / 'run'
  first = run_train(workdir, *TINY, '--config.exit_after_step=4')
  assert first.returncode == 0, first.stderr[-2000:]
  run_id = (workdir / 'wandb_run_id.txt').read_text().strip()
  second = run_train(workdir, *TINY)
  assert second.returncode == 0, second.stderr[-2000:]
  assert 'resumed from' in second.stdout
  assert (workdir / 'wandb_run_id.txt').read_text().strip() == run_id
  runs = sorted(d for d in os.listdir(tmp_path / 'tracker' / 'wandb') if d.startswith('offline-run-'))
  assert len(runs) == 2 and all(d.endswith(f'-{run_id}') for d in runs)
  (id1, before), (id2, after) = (offline_run(tmp_path / 'tracker' / 'wandb' / d) for d in runs)
  assert id1 == id2 == run_id
  assert sorted(before) == [2, 4] and sorted(after) == [6]  # the resume goes on from step 4
  rows = {r['step']: r for r in read_metrics(workdir)}
  for step, logged in {**before, **after}.items():  # the same rows as metrics.jsonl
    assert {k: logged[k] for k in rows[step] if k != 'step'} == \
        {k: v for k, v in rows[step].items() if k != 'step'}
  [final_eval] = read_metrics(workdir, evals=True)  # the final eval joins the last step's row
  assert after[6]['zeroshot/shapes_zeroshot/acc1'] == final_eval['zeroshot/shapes_zeroshot/acc1']


def test_wandb_asked_for_but_not_installed_is_one_line(tmp_path):
  code = ('import sys; sys.modules["wandb"] = None\n'  # as if not installed
          'from pretrain.train import main\n'
          f'sys.exit(main(["--config", "configs/demo.py", "--workdir", {str(tmp_path)!r}, '
          '"--config.log.wandb.project=demo"]))')
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, 'PYTHONPATH': ROOT}, timeout=120)
  from pretrain.runtime.tracker import WANDB_VERSION
  assert done.returncode == 2
  assert done.stderr.strip() == ('error: config.log.wandb is set but wandb is not installed: '
                                 f'pip install wandb=={WANDB_VERSION}')
  assert not os.listdir(tmp_path)  # refused before the workdir was touched


def test_wandb_off_by_default_and_mode_checked():
  from configs.common import base_config
  from data.errors import ConfigError
  from pretrain.config.rules import check_fields
  from pretrain.runtime.tracker import wanted
  config = base_config()
  assert not wanted(config.log.wandb)
  config.log.wandb.project = 'demo'
  assert wanted(config.log.wandb)
  config.log.wandb.mode = 'disabled'
  assert not wanted(config.log.wandb)
  config.log.wandb.mode = 'sometimes'
  with pytest.raises(ConfigError, match="unknown log.wandb.mode 'sometimes'; known: online, "
                                        'offline, disabled'):
    check_fields(config)
