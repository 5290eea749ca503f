"""The loop reads nothing from the devices between the steps it acts on (log, checkpoint, stop), and
the lazily read skip rule gives exactly what reading every update gave."""

import pytest
from jax._src.array import ArrayImpl

from configs.common import base_config
from pretrain.parallel import sharding
from pretrain.runtime.loop import NonFiniteError
from tests.helpers import read_metrics


def demo_config(**fields):
  """The tiny demo in-process: no final eval, no compile cache (this process's jax is shared)."""
  config = base_config()
  config.model.update(dict(image_size=16, context_length=12))
  config.update({**dict(batch_size=16, total_steps=12, log_every=4, checkpoint_every=12,
                        compile_cache_dir=''), **fields})
  config.optim.warmup_steps = 1
  config.eval.zeroshot = ''
  return config


@pytest.fixture
def reads(monkeypatch):
  """Events in order: 'batch' each time the loop builds a global batch, 'read' each time a
  device array's value is fetched to the host (ArrayImpl._value: np.asarray, device_get, float,
  bool and int all go through it)."""
  events = []
  value, global_batch = ArrayImpl._value, sharding.global_batch

  def counted_value(self):
    events.append('read')
    return value.fget(self)

  def marked_global_batch(*args):
    events.append('batch')
    return global_batch(*args)

  monkeypatch.setattr(ArrayImpl, '_value', property(counted_value))
  monkeypatch.setattr(sharding, 'global_batch', marked_global_batch)
  return events


def reads_per_batch(events) -> list[int]:
  """Reads after each global batch is built, up to the next one (the last: up to the end)."""
  counts = []
  for event in events[events.index('batch'):]:
    if event == 'batch':
      counts.append(0)
    else:
      counts[-1] += 1
  return counts


def test_no_device_reads_between_log_steps(tmp_path, reads):
  from pretrain.train import train
  # Attempt 6 is non-finite: 13 updates for 12 steps; logs at steps 4, 8, 12 (attempts 4, 9, 13).
  train(demo_config(debug=dict(nonfinite_at_attempts=(6,))), str(tmp_path))
  counts = reads_per_batch(reads)
  print('device->host reads after each batch:', counts)  # shown with pytest -s
  assert len(counts) == 13  # one batch per update
  # Batch k + 1 is built while update k runs; update k's reads (if any) come after it.
  # The host settles at the updates where its step count reaches a log step: 4, 8 (only 7
  # applied: the skip is found there) and 9, then 13, which also checkpoints (no prefetch).
  settled = [k + 1 for k in (4, 8, 9)] + [13]
  assert [k for k, n in enumerate(counts, 1) if n] == settled, counts
  assert [r['step'] for r in read_metrics(tmp_path)] == [4, 8, 12]
  assert [r['skipped_updates'] for r in read_metrics(tmp_path)] == [0, 1, 1]


def test_lazy_reads_give_the_same_run_as_reading_every_update(tmp_path):
  from pretrain.train import train
  skips = dict(nonfinite_at_attempts=(3, 6, 7))
  train(demo_config(debug=skips), str(tmp_path / 'lazy'))
  train(demo_config(debug=skips, log_every=1), str(tmp_path / 'eager'))  # settles every update
  lazy = read_metrics(tmp_path / 'lazy')
  eager = {r['step']: r for r in read_metrics(tmp_path / 'eager')}
  assert [r['step'] for r in lazy] == [4, 8, 12]
  for row in lazy:
    for key in ('loss', 'batch_crc32', 'skipped_updates', 'grad_norm', 'acc_i2t'):
      assert row[key] == eager[row['step']][key], (row['step'], key)


def test_too_many_skips_in_a_row_stop_at_the_same_step(tmp_path, capfd):
  from pretrain.train import train
  # Attempts 5-7 skip: the third in a row is at step 5, read only at the sync of attempt 8.
  config = demo_config(debug=dict(nonfinite_at_attempts=(5, 6, 7)), max_consecutive_skips=3,
                       checkpoint_every=4)
  with pytest.raises(NonFiniteError) as error:
    train(config, str(tmp_path))
  assert str(error.value).startswith('3 non-finite updates in a row at step 5 ')
  assert 'The last good checkpoint is step 4;' in str(error.value)
  warnings = [l for l in capfd.readouterr().err.splitlines() if 'update skipped' in l]
  assert [w.split(':')[1].strip() for w in warnings] == ['step 5'] * 3
  assert [w.split('(')[-1] for w in warnings] == ['1 in a row)', '2 in a row)', '3 in a row)']


def test_evaluations_read_only_at_their_steps(tmp_path, reads):
  from pretrain.train import train
  config = demo_config()
  config.eval.update(dict(every=6, zeroshot='shapes:zeroshot'))
  final = train(config, str(tmp_path))
  # Syncs at the log steps 4, 8, 12 and the eval step 6; update k's reads follow batch k + 1
  # (the last, which checkpoints, has no next batch).
  assert [k for k, n in enumerate(reads_per_batch(reads), 1) if n] == [5, 7, 9, 12]
  rows = read_metrics(tmp_path, evals=True)
  assert [r['step'] for r in rows] == [6, 12]
  assert final == {k: v for k, v in rows[1].items() if k != 'step'}
  assert 0 <= final['zeroshot/shapes_zeroshot/acc1'] <= 1
