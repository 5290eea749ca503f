"""Checkpoints of the legacy layout still resume and evaluate.

Before TrainState had `batch_stats`, a BatchNorm model's running averages were leaves of the
`params` item and the optimizer state held Adam moments for them. The test writes that layout with
orbax directly, from a run's own checkpoint, and checks it restores, evaluates and resumes exactly
as the new-layout original does.
"""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from pretrain.config.cli import load_saved_config
from pretrain.models.param_paths import named_leaves, param_name
from pretrain.runtime.checkpoint import Checkpointer, checkpoint_dir, restore_model, restore_params
from pretrain.step.state import (COUNTER_FIELDS, checkpoint_items, from_checkpoint_items,
                                 merge_variables)
from tests.helpers import max_tree_diff, mesh, read_metrics, run_train, step_builder

ALIGN = ['--config.model.image_size=16', '--config.data.resize=19', '--config.batch_size=16',
         '--config.optim.warmup_steps=1', '--config.log_every=1', '--config.eval.zeroshot=',
         '--config.checkpoint_every=2', '--config.total_steps=4']


class _DataPosition:
  """Receives the data iterator state a restore hands over."""

  def set_state(self, state):
    self.state = state


def _write_legacy_copy(new, old, builder, step: int) -> int:
  """Workdir `old`: `new`'s files with checkpoint `step` rewritten in the legacy layout; returns
  the number of optimizer-state leaves the legacy layout adds (moments of the averages)."""
  shutil.copytree(new, old, ignore=shutil.ignore_patterns('checkpoints'))
  manager = ocp.CheckpointManager(checkpoint_dir(new))
  items = {name: ocp.args.StandardRestore(tree)
           for name, tree in checkpoint_items(builder.abstract_state).items()}
  restored = manager.restore(step, args=ocp.args.Composite(**items, data=ocp.args.JsonRestore()))
  manager.close()
  state = jax.device_get(from_checkpoint_items(restored))
  old_params = merge_variables(state.params, state.batch_stats)
  # The legacy optimizer state: the same moments, plus (arbitrary, to be dropped) ones for the
  # running averages.
  moments = named_leaves(state.opt_state)
  old_opt = jax.tree_util.tree_map_with_path(
      lambda path, leaf: moments.get(param_name(path), np.full(leaf.shape, 7, leaf.dtype)),
      jax.eval_shape(builder.tx.init, old_params))
  writer = ocp.CheckpointManager(checkpoint_dir(old),
                                 options=ocp.CheckpointManagerOptions(create=True))
  writer.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(old_params), opt_state=ocp.args.StandardSave(old_opt),
      train=ocp.args.StandardSave({name: getattr(state, name) for name in COUNTER_FIELDS}),
      data=ocp.args.JsonSave(restored['data'])))
  writer.wait_until_finished()
  writer.close()
  return len(jax.tree.leaves(old_opt)) - len(moments)


def test_legacy_batchnorm_checkpoint_restores_evaluates_and_resumes(tmp_path):
  new, old = tmp_path / 'new', tmp_path / 'old'
  first = run_train(new, *ALIGN, '--config.exit_after_step=2', config='configs/align.py:tiny',
                    devices=1)
  assert first.returncode == 0, first.stderr[-2000:]
  config = load_saved_config(str(new / 'config.json'))
  builder = step_builder(config, mesh(1, 1, jax.devices()[:1]))
  stats_leaves = len(jax.tree.leaves(builder.abstract_state.batch_stats))
  assert _write_legacy_copy(new, old, builder, 2) == 2 * stats_leaves > 0  # Adam's mu and nu
  assert not (old / 'checkpoints' / '2' / 'batch_stats').exists()

  # Resume's restore: the same state as the original's, the averages' moments dropped.
  restored = []
  for workdir in (new, old):
    ckpt = Checkpointer(str(workdir), 2)
    restored.append(jax.device_get(ckpt.restore(2, builder.abstract_state, _DataPosition())))
    ckpt.close()
  same = jax.tree.map(np.array_equal, restored[0], restored[1])
  assert all(jax.tree.leaves(same))

  # Eval's restore: parameters and running averages, and parameters alone.
  abstract = builder.abstract_state
  models = [restore_model(str(w), None, abstract.params, abstract.batch_stats) for w in (new, old)]
  assert models[0][0] == models[1][0] == 2
  assert max_tree_diff(models[0][1:], models[1][1:]) == 0.0
  assert max_tree_diff(restore_params(str(old), 2, abstract.params)[1], models[0][1]) == 0.0

  # Resuming both runs gives the same steps, bit for bit; the old workdir now writes the new layout.
  for workdir in (new, old):
    result = run_train(workdir, *ALIGN, config='configs/align.py:tiny', devices=1)
    assert result.returncode == 0 and 'resumed from' in result.stdout, result.stderr[-2000:]
  rows = [[(r['step'], r['loss'], r['batch_crc32']) for r in read_metrics(w)] for w in (new, old)]
  assert rows[0] == rows[1] and [r[0] for r in rows[0]] == [1, 2, 3, 4]
  assert (old / 'checkpoints' / '4' / 'batch_stats').is_dir()
  final = [restore_model(str(w), 4, abstract.params, abstract.batch_stats) for w in (new, old)]
  assert max_tree_diff(final[0][1:], final[1][1:]) == 0.0
