"""Orbax checkpoints under WORKDIR/checkpoints/<step>/: params, optimizer state, step/RNG, data state.

Items are saved separately so eval jobs can restore `params` alone onto any mesh.
"""

import os
from typing import Any

import orbax.checkpoint as ocp

from data.errors import ConfigError
from pretrain.models.param_paths import named_leaves


# Small host-side parts of the train state, saved together as the `train` item.
TRAIN_ITEM_KEYS = ('step', 'rng', 'bad_records', 'skipped_updates', 'consecutive_skips')


def checkpoint_dir(workdir: str) -> str:
  """Where a run's checkpoints live."""
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def complete_steps(workdir: str) -> list[int]:
  """Steps of checkpoints whose writing has finished (orbax renames them into place when done)."""
  folder = checkpoint_dir(workdir)
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder)
                if name.isdigit() and os.path.isdir(os.path.join(folder, name)))


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

  def save(self, step: int, state: dict, data_iterator: Any) -> None:
    """Starts an async save of the whole train state and the data position."""
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state['params']),
        opt_state=ocp.args.StandardSave(state['opt_state']),
        train=ocp.args.StandardSave({k: state[k] for k in TRAIN_ITEM_KEYS}),
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

  def restore(self, step: int, abstract_state: dict, data_iterator: Any) -> dict:
    """The train state at `step`, placed as `abstract_state`'s shardings; moves the data iterator."""
    check_shapes(self.manager.directory, step, abstract_state['params'])
    args = ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state['params']),
        opt_state=ocp.args.StandardRestore(abstract_state['opt_state']),
        train=ocp.args.StandardRestore({k: abstract_state[k] for k in TRAIN_ITEM_KEYS}),
        data=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    data_iterator.set_state(restored['data'])
    return {'params': restored['params'], 'opt_state': restored['opt_state'],
            **restored['train']}

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
  metadata = ocp.StandardCheckpointer().metadata(os.path.join(str(directory), str(step), 'params'))
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


def restore_params(workdir: str, step: int | None, abstract_params: Any) -> tuple[int, Any]:
  """Parameters only (no optimizer state) of checkpoint `step` (None: newest), onto any mesh."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no complete checkpoint in {checkpoint_dir(workdir)}')
    if not os.path.isdir(os.path.join(checkpoint_dir(workdir), str(step))):
      raise FileNotFoundError(f'no checkpoint {step} in {checkpoint_dir(workdir)}')
    check_shapes(manager.directory, step, abstract_params)
    args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
    return step, manager.restore(step, args=args)['params']
  finally:
    manager.close()
