"""A run's identity: the config its workdir was started with, and what a resume may change.

A re-run of the same command resumes; a re-run with other values must not quietly become another
run. Fields that steer cadence, stopping, evaluation, the device layout, memory levers with the same
maths, input throughput or experiment tracking may change on resume (each change is appended to config_history.jsonl);
any other field (the model, the loss, the optimizer, the data and its order, the batch) is refused
unless the user passes --allow_config_change, which is recorded too.
"""

import json
import time

import ml_collections

from data import storage
from data.errors import ConfigError
from pretrain.config.cli import load_saved_config
from pretrain.runtime.checkpoint import complete_steps

HISTORY_FILE = 'config_history.jsonl'
# Dotted field names (or prefixes ending in '.') a resumed run may change. Not the loss.* fields,
# loss.matryoshka_* included: they change the objective (and per-prefix temperatures the parameters).
MAY_CHANGE = (
    'total_steps', 'log_every', 'checkpoint_every', 'keep_checkpoints', 'exit_after_step',
    'max_consecutive_skips', 'prefault_step_memory', 'tower_batch_chunks', 'debug.', 'mesh.',
    'param_sharding', 'accum_steps', 'model.ops', 'model.attention', 'model.image_remat',
    'model.text_remat', 'compile_cache_dir', 'deterministic', 'data.num_threads', 'data.prefetch',
    'data.workers', 'data.max_unknown_token_rate', 'data.index_dir', 'eval.', 'log.',
)


def flat_fields(tree: dict, prefix: str = '') -> dict:
  """{'model': {'dtype': x}} -> {'model.dtype': x}."""
  fields = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      fields.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      fields[prefix + key] = value
  return fields


def plain(config: ml_collections.ConfigDict) -> dict:
  """The config as config.json holds it (tuples as lists)."""
  return json.loads(config.to_json())


def changes_between(saved: dict, new: dict) -> dict[str, tuple]:
  """Field -> (saved value, new value) for every field that differs."""
  before, after = flat_fields(saved), flat_fields(new)
  return {name: (before.get(name), after.get(name)) for name in sorted(set(before) | set(after))
          if before.get(name) != after.get(name)}


def may_change(field: str) -> bool:
  """Whether a resumed run may change `field` without --allow_config_change."""
  return any(field == name or (name.endswith('.') and field.startswith(name))
             for name in MAY_CHANGE)


def check_resume(workdir: str, config: ml_collections.ConfigDict, allow: bool) -> dict:
  """The changes this resume makes to the run's config (empty for a fresh run); refuses changes
  to the run's identity, in one line, unless `allow` (or the run has no checkpoint to lose)."""
  path = storage.join(workdir, 'config.json')
  if not storage.is_file(path):
    return {}
  changes = changes_between(plain(load_saved_config(path)), plain(config))
  refused = [name for name in changes if not may_change(name)]
  if refused and not allow and complete_steps(workdir):
    listed = ', '.join(f'{name} ({changes[name][0]!r} -> {changes[name][1]!r})'
                       for name in refused[:6])
    more = f' and {len(refused) - 6} more' if len(refused) > 6 else ''
    raise ConfigError(
        f'{workdir} is a run started with other settings: {listed}{more}. Re-run with the '
        'original values, use a new --workdir, or pass --allow_config_change to change them '
        f'anyway (recorded in {HISTORY_FILE})')
  return changes


def record_changes(workdir: str, changes: dict, step: int | None, allowed: bool) -> None:
  """Appends one line to config_history.jsonl naming each change and the step it applies from
  (in a bucket, which has no append, through storage.append_bytes)."""
  if not changes:
    return
  entry = {'time': time.strftime('%Y-%m-%dT%H:%M:%S'), 'from_step': step or 0,
           'allow_config_change': allowed,
           'changes': {name: {'was': old, 'now': new} for name, (old, new) in changes.items()}}
  storage.append_bytes(storage.join(workdir, HISTORY_FILE), (json.dumps(entry) + '\n').encode())
