"""Orbax checkpoints under WORKDIR/checkpoints/<step>/: the train state and the data position.

Items are named after TrainState's fields (pretrain/step/state.py): `params`, `batch_stats` (models
with BatchNorm), `opt_state`, and `train` (the counters and key), so eval jobs restore the model
alone onto any mesh. Checkpoints written before `batch_stats` had its own item (the legacy layout)
hold the running averages inside `params` and Adam moments for them in `opt_state`; they restore
through `restore_legacy_arrays`.
"""

from typing import Any

import jax
import orbax.checkpoint as ocp

from data import storage
from data.errors import ConfigError
from pretrain.models.param_paths import named_leaves
from pretrain.step.state import (COUNTERS_ITEM, TrainState, checkpoint_items,
                                 from_checkpoint_items)


# On GCS orbax writes a step straight into its final folder (a bucket cannot rename a folder
# atomically) and marks it complete with this object, written last.
COMMIT_MARKER = 'commit_success.txt'


def checkpoint_dir(workdir: str) -> str:
  """Where a run's checkpoints live."""
  return storage.join(storage.absolute(workdir), 'checkpoints')


def check_checkpoint_location(workdir: str, what: str = 'workdir') -> None:
  """One-line ConfigError, before anything is made or compiled, for a workdir whose checkpoints
  orbax cannot read or write: s3:// (orbax 0.12.8 handles local paths and gs:// only; given s3://
  it first makes a local folder named `s3:`), another URL scheme, or an unreachable bucket."""
  if storage.scheme(workdir) == 's3':
    raise ConfigError(f'{what} {workdir}: orbax cannot read or write checkpoints in s3:// (it '
                      'supports local paths and gs:// only); use a gs:// workdir or a local/NFS '
                      'folder (s3:// works for data and exports)')
  storage.as_path(workdir)  # other schemes: one line
  storage.check_reachable(workdir, what)


def has_checkpoint(workdir: str, step: int) -> bool:
  """Whether checkpoint `step` is (still) there: keep-N may delete one while an eval job waits."""
  return storage.is_dir(storage.join(checkpoint_dir(workdir), str(step)))


def complete_steps(workdir: str) -> list[int]:
  """Steps of checkpoints whose writing has finished (locally orbax renames them into place when
  done; in a bucket it writes their commit marker last)."""
  folder = checkpoint_dir(workdir)
  storage.refresh(folder)  # orbax writes past the client's listing cache
  if not storage.is_dir(folder):
    return []
  steps = [name for name in storage.listdir(folder) if name.isdigit()]
  if storage.is_bucket(folder):
    return sorted(int(name) for name in steps
                  if storage.is_file(storage.join(folder, name, COMMIT_MARKER)))
  return sorted(int(name) for name in steps if storage.is_dir(storage.join(folder, name)))


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (disk full, read-only, ...); older ones are untouched."""


def _root_cause(error: BaseException) -> str:
  """The innermost OSError's message, else the error's own first line."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return f'{seen.strerror} ({seen.filename or "?"})'
    seen = seen.__cause__ or seen.__context__
  return str(error).splitlines()[0] if str(error) else type(error).__name__


class Checkpointer:
  """Async save every N steps with keep-N; restore of the newest complete checkpoint."""

  def __init__(self, workdir: str, keep: int):
    # Temporary folders of a save cut short (kill, full disk) are removed when a run starts.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    self.workdir, self.directory = workdir, checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._pending = None  # step of the save in flight

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self.manager.latest_step()

  def save(self, step: int, state: TrainState, data_iterator: Any) -> None:
    """Starts an async save of the whole train state and the data position."""
    args = ocp.args.Composite(
        **{name: ocp.args.StandardSave(tree) for name, tree in checkpoint_items(state).items()},
        # Captured now, not when the async write runs: the loop advances the iterator meanwhile.
        # Every process is at the same position (one local batch per step), so one copy serves.
        data=ocp.args.JsonSave(data_iterator.get_state()))
    self._guarded(lambda: self.manager.save(step, args=args, force=True), step)
    self._pending = step

  def _guarded(self, action, step: int | None) -> None:
    """Runs a save/wait; a failure becomes one clear CheckpointWriteError."""
    try:
      action()
    except Exception as e:  # orbax surfaces write errors with many types, often from a thread.
      failed = self._pending if self._pending is not None else step  # async errors surface late
      complete = complete_steps(self.workdir)
      raise CheckpointWriteError(
          f'writing checkpoint {failed} to {self.directory} failed: {_root_cause(e)}; '
          f'the complete checkpoints {complete} are intact') from None

  def restore(self, step: int, abstract_state: TrainState, data_iterator: Any) -> TrainState:
    """The train state at `step`, placed as `abstract_state`'s shardings; moves the data iterator."""
    step_dir = storage.join(self.directory, str(step))
    check_shapes(self.directory, step, abstract_state.params)
    wanted = checkpoint_items(abstract_state)
    legacy = is_legacy_layout(step_dir, abstract_state.batch_stats)
    if legacy:  # Only the counters through the manager; the arrays need migrating.
      wanted = {COUNTERS_ITEM: wanted[COUNTERS_ITEM]}
    args = ocp.args.Composite(
        **{name: ocp.args.StandardRestore(tree) for name, tree in wanted.items()},
        data=ocp.args.JsonRestore())
    restored = dict(self.manager.restore(step, args=args))
    data_iterator.set_state(restored.pop('data'))
    if legacy:
      restored.update(restore_legacy_arrays(step_dir, abstract_state))
    return from_checkpoint_items(restored)

  def wait(self) -> None:
    """Blocks until pending async saves are complete."""
    self._guarded(self.manager.wait_until_finished, None)
    self._pending = None

  def close(self) -> None:
    """Waits for saves, then releases the manager."""
    self.wait()
    self.manager.close()


def check_shapes(directory, step: int, abstract_params: Any) -> None:
  """Raises ConfigError naming the first parameter whose saved shape differs from the config's."""
  item = storage.join(str(directory), str(step), 'params')
  metadata = ocp.StandardCheckpointer().metadata(item)
  saved = getattr(metadata, 'item_metadata', metadata)
  saved = {name: tuple(leaf.shape)
           for name, leaf in named_leaves(getattr(saved, 'tree', saved)).items()}
  wanted = {name: tuple(leaf.shape) for name, leaf in named_leaves(abstract_params).items()}
  for name, shape in wanted.items():
    if name not in saved:
      raise ConfigError(f'checkpoint {step} in {directory} has no parameter {name}: '
                        'was it written by a different model config?')
    if saved[name] != shape:
      raise ConfigError(f'checkpoint {step} in {directory}: parameter {name} has shape '
                        f'{saved[name]} but the config makes {shape}: was it written by a '
                        'different model config?')


def is_legacy_layout(step_dir: str, abstract_stats: Any) -> bool:
  """Whether checkpoint `step_dir` keeps a BatchNorm model's running averages inside `params`
  (written before they had their own `batch_stats` item)."""
  return bool(jax.tree.leaves(abstract_stats)) and not storage.is_dir(
      storage.join(step_dir, 'batch_stats'))


def _restore_subtree(item_dir: str, abstract: Any) -> Any:
  """The leaves of `abstract`'s paths from a saved item that may hold more (orbax partial restore)."""
  args = ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(item_dir, args=args)


def restore_legacy_arrays(step_dir: str, abstract: TrainState) -> dict[str, Any]:
  """The `params`, `batch_stats` and `opt_state` items of a legacy-layout checkpoint, migrated: the
  running averages pulled out of its `params`, their optimizer moments left behind in its
  `opt_state` (the new optimizer state has the same paths, minus those of the averages)."""
  restored = {'params': _restore_subtree(storage.join(step_dir, 'params'), abstract.params),
              'batch_stats': _restore_subtree(storage.join(step_dir, 'params'),
                                              abstract.batch_stats)}
  if jax.tree.leaves(abstract.opt_state):
    restored['opt_state'] = _restore_subtree(storage.join(step_dir, 'opt_state'),
                                             abstract.opt_state)
  return restored


def restore_model(workdir: str, step: int | None, abstract_params: Any,
                  abstract_stats: Any) -> tuple[int, Any, Any]:
  """(step, parameters, BatchNorm running averages) of checkpoint `step` (None: newest), no
  optimizer state, onto any mesh; reads the legacy layout too."""
  directory = checkpoint_dir(workdir)
  storage.refresh(directory)
  manager = ocp.CheckpointManager(directory)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no complete checkpoint in {directory}')
    step_dir = storage.join(directory, str(step))
    if not storage.is_dir(step_dir):
      raise FileNotFoundError(f'no checkpoint {step} in {directory}')
    check_shapes(directory, step, abstract_params)
  finally:
    manager.close()
  # Partial restores read `params` alone from either layout (and skip legacy averages in it).
  params = _restore_subtree(storage.join(step_dir, 'params'), abstract_params)
  if not jax.tree.leaves(abstract_stats):
    return step, params, abstract_stats
  stats_item = 'params' if is_legacy_layout(step_dir, abstract_stats) else 'batch_stats'
  return step, params, _restore_subtree(storage.join(step_dir, stats_item), abstract_stats)


def restore_params(workdir: str, step: int | None, abstract_params: Any) -> tuple[int, Any]:
  """Parameters only (no running averages or optimizer state) of checkpoint `step` (None: newest)."""
  step, params, _ = restore_model(workdir, step, abstract_params, {})
  return step, params
