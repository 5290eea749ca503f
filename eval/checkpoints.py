"""A run's checkpoints as the offline jobs read them, on local disk or in a gs:// bucket.

The jobs only read: which checkpoints are complete, and a checkpoint's model (parameters, BatchNorm
averages) onto the job's own mesh. Completeness is orbax's own test, so it holds where orbax
commits by a `commit_success.txt` file (GCS) as well as by renaming a temporary folder (local).
orbax 0.12.8 cannot read or write checkpoints in s3://: such a workdir is refused in one line.
"""

from typing import Any

import jax
import orbax.checkpoint as ocp

from data import storage
from data.errors import ConfigError
from pretrain.runtime.checkpoint import check_shapes


def checkpoint_folder(workdir: str) -> str:
  """WORKDIR/checkpoints (a local workdir made absolute)."""
  return storage.join(storage.absolute(workdir), 'checkpoints')


def check_checkpoint_workdir(workdir: str) -> None:
  """One-line ConfigError for an s3:// workdir or an unreachable bucket, before any compile."""
  if storage.scheme(workdir) == 's3':
    raise ConfigError(f'--workdir {workdir}: orbax 0.12.8 cannot read or write checkpoints in '
                      's3://; use a gs:// or local workdir (copy the run there)')
  storage.check_reachable(workdir, '--workdir')


def complete_steps(workdir: str) -> list[int]:
  """Steps of the checkpoints whose writing has finished, oldest first."""
  folder = checkpoint_folder(workdir)
  if not storage.is_dir(folder):
    return []
  return sorted(ocp.utils.checkpoint_steps(folder))


def has_checkpoint(workdir: str, step: int) -> bool:
  """Whether checkpoint `step` is (still) there: keep-N may delete one while a job waits."""
  return storage.is_dir(storage.join(checkpoint_folder(workdir), str(step)))


def restore_subtree(item_dir: str, abstract: Any) -> Any:
  """The leaves of `abstract`'s paths from a saved item that may hold more (a partial restore)."""
  args = ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(item_dir, args=args)


def _is_legacy_layout(step_dir: str, abstract_stats: Any) -> bool:
  """A BatchNorm model's averages inside `params` (written before `batch_stats` was an item)."""
  return bool(jax.tree.leaves(abstract_stats)) and not storage.is_dir(
      storage.join(step_dir, 'batch_stats'))


def restore_model(workdir: str, step: int | None, abstract_params: Any,
                  abstract_stats: Any) -> tuple[int, Any, Any]:
  """(step, parameters, BatchNorm running averages) of checkpoint `step` (None: the newest), no
  optimizer state, placed as the abstract trees say; reads the legacy layout too."""
  folder = checkpoint_folder(workdir)
  if step is None:
    steps = complete_steps(workdir)
    if not steps:
      raise FileNotFoundError(f'no complete checkpoint in {folder}')
    step = steps[-1]
  step_dir = storage.join(folder, str(step))
  if not storage.is_dir(step_dir):
    raise FileNotFoundError(f'no checkpoint {step} in {folder}')
  check_shapes(folder, step, abstract_params)
  # Partial restores read `params` alone from either layout (and skip legacy averages in it).
  params = restore_subtree(storage.join(step_dir, 'params'), abstract_params)
  if not jax.tree.leaves(abstract_stats):
    return step, params, abstract_stats
  stats_item = 'params' if _is_legacy_layout(step_dir, abstract_stats) else 'batch_stats'
  return step, params, restore_subtree(storage.join(step_dir, stats_item), abstract_stats)


def restore_params(workdir: str, step: int | None, abstract_params: Any) -> tuple[int, Any]:
  """Parameters only of checkpoint `step` (None: the newest)."""
  step, params, _ = restore_model(workdir, step, abstract_params, {})
  return step, params
