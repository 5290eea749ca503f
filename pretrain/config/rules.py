"""Every config field's type, range and shape: one table (field -> Rule), checked before compiling.

The table covers every field of configs/common.py's base_config() (tests/test_config_rules.py fails
for a field without a rule), so no config value reaches XLA unchecked. Checks that relate fields to
each other or to the machine stay in validate.py.
"""

import dataclasses
import math
from typing import Any

import ml_collections

from data.errors import ConfigError
from data.records import BAD_POLICIES
from data.sources import check_spec
from data.transforms import AUGMENTS
from pretrain.backends import ATTENTION, OPS
from pretrain.losses import LOSS_IMPLS
from pretrain.models.layers import ACTIVATIONS, REMAT_POLICIES
from pretrain.models.towers import IMAGE_POOLS, TEXT_POOLS
from pretrain.models.variants import SIZE_KEYS
from pretrain.parallel.sharding import PARAM_RULES
from pretrain.runtime.tracker import WANDB_MODES
from pretrain.step.optim import OPTIMIZERS, SCHEDULES

DTYPES = ('float32', 'bfloat16')
EVAL_TASK_KINDS = ('zeroshot', 'retrieval')  # what eval.tasks may run during training
KINDS = ('int', 'float', 'bool', 'str', 'floats', 'ints', 'strs', 'group')


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one field may hold. Bounds apply to a number or to each item of a tuple."""

  kind: str                          # one of KINDS
  low: float | None = None           # inclusive lower bound
  above: float | None = None         # exclusive lower bound
  high: float | None = None          # inclusive upper bound
  below: float | None = None         # exclusive upper bound
  choices: tuple | None = None       # allowed values (strings)
  length: int | None = None          # items of a tuple
  nonempty: bool = False             # a string that must not be ''
  also: tuple = ()                   # other allowed values outside the range (e.g. -1 = the rest)
  wording: str = ''                  # how the range reads in the message, instead of the bounds
  why: str = ''                      # appended to the message

  def allowed(self) -> str:
    """The allowed values in words, for messages and docs."""
    if self.choices is not None:
      return 'one of ' + ', '.join(map(str, self.choices))
    if self.wording:
      return self.wording
    parts = []
    if self.above == 0 and self.low is None and self.high is None and self.below is None:
      parts.append('positive')
    else:
      if self.low is not None:
        parts.append(f'at least {self.low}')
      if self.above is not None:
        parts.append(f'above {self.above}')
      if self.high is not None:
        parts.append(f'at most {self.high}')
      if self.below is not None:
        parts.append(f'below {self.below}')
    text = ' and '.join(parts)
    if self.also:
      text = f'{" or ".join(map(str, self.also))} or {text}' if text else ' or '.join(self.also)
    return text


def _int(**kw) -> Rule:
  return Rule('int', **kw)


def _float(**kw) -> Rule:
  return Rule('float', **kw)


BOOL, STR, GROUP = Rule('bool'), Rule('str'), Rule('group')
PATH_OR_SPEC = Rule('str', nonempty=True)
UNIT = _float(low=0.0, high=1.0)
BELOW_ONE = _float(low=0.0, below=1.0)
MESH_AXIS = _int(low=1, also=(-1,), wording='-1 (the rest) or at least 1')

RULES: dict[str, Rule] = {
    'seed': _int(low=0, high=2**32 - 1),  # grain's shuffle takes a uint32
    'total_steps': _int(above=0),
    'batch_size': _int(above=0),
    'accum_steps': _int(low=1, wording='>= 1'),
    'log_every': _int(above=0),
    'checkpoint_every': _int(above=0),
    'keep_checkpoints': _int(low=1, why=': the newest checkpoint is what re-running the command '
                                        'resumes from'),
    'exit_after_step': _int(low=0),
    'max_consecutive_skips': _int(low=1),
    'prefault_step_memory': BOOL,
    'tower_batch_chunks': _int(low=0, wording='>= 0 (0 = auto)'),
    'compile_cache_dir': STR,        # '' = off, 'auto' or a folder
    'deterministic': BOOL,
    'init_from': STR,
    'init_from_include': Rule('strs'),
    'freeze': Rule('strs'),
    'debug': GROUP,
    'debug.nonfinite_at_attempts': Rule('ints', low=1),
    'mesh': GROUP,
    'mesh.data': MESH_AXIS,
    'mesh.fsdp': MESH_AXIS,
    'param_sharding': Rule('str', choices=PARAM_RULES),
    'model': GROUP,
    'model.variant': PATH_OR_SPEC,   # names checked by variants.model_size (its own message)
    'model.custom': GROUP,           # keys and sizes: check_custom below
    'model.activation': Rule('str', choices=tuple(ACTIVATIONS)),
    'model.dtype': Rule('str', choices=DTYPES),
    'model.ops': Rule('str', choices=OPS),
    'model.attention': Rule('str', choices=ATTENTION),
    'model.image_remat': Rule('str', choices=tuple(REMAT_POLICIES)),
    'model.text_remat': Rule('str', choices=tuple(REMAT_POLICIES)),
    'model.scan_layers': BOOL,
    'model.image_size': _int(above=0),
    'model.image_pool': Rule('str', choices=IMAGE_POOLS),
    'model.image_ln_pre': BOOL,
    'model.image_drop_path': BELOW_ONE,
    'model.image_bn_momentum': BELOW_ONE,
    'model.image_mean': Rule('floats', length=3, low=0.0, high=1.0,
                             why=' (one per RGB channel of [0, 1] pixels)'),
    'model.image_std': Rule('floats', length=3, above=0.0,
                            why=' (one per RGB channel of [0, 1] pixels)'),
    'model.vocab_size': _int(above=0),
    'model.context_length': _int(low=2, why=' (a token and the end-of-text)'),
    'model.text_causal': BOOL,
    'model.text_pool': Rule('str', choices=TEXT_POOLS),
    'model.text_eos_id': _int(low=-1, wording='-1 (none) or an id >= 0'),
    'loss': GROUP,
    'loss.name': Rule('str', choices=tuple(LOSS_IMPLS)),
    'loss.impl': PATH_OR_SPEC,       # depends on loss.name: validate.check_training
    'loss.tile': _int(above=0),
    'loss.init_logit_bias': _float(),
    'loss.init_logit_scale': _float(above=0.0),
    'loss.max_logit_scale': _float(low=0.0),
    'loss.label_smoothing': BELOW_ONE,
    'loss.matryoshka_dims': Rule('ints', above=0),  # against the width: check_matryoshka
    'loss.matryoshka_weights': Rule('floats', above=0.0),
    'loss.matryoshka_per_prefix_temperature': BOOL,
    'optim': GROUP,
    'optim.name': Rule('str', choices=OPTIMIZERS),
    'optim.lr': _float(above=0.0),
    'optim.warmup_steps': _int(low=0),
    'optim.end_lr_ratio': UNIT,
    'optim.decay': Rule('str', choices=SCHEDULES),
    'optim.weight_decay': _float(low=0.0),
    'optim.b1': BELOW_ONE,
    'optim.b2': BELOW_ONE,
    'optim.eps': _float(low=0.0),
    'optim.grad_clip_norm': _float(low=0.0),
    'data': GROUP,
    'data.train': PATH_OR_SPEC,
    'data.tokenizer': PATH_OR_SPEC,
    'data.lowercase': BOOL,
    'data.resize': _int(low=0),
    'data.flip': BOOL,
    'data.augment': Rule('str', choices=AUGMENTS),
    'data.rrc_scale': Rule('floats', length=2, above=0.0, high=1.0),
    'data.num_threads': _int(low=1),
    'data.prefetch': _int(low=0),
    'data.workers': _int(low=0),
    'data.on_bad_record': Rule('str', choices=BAD_POLICIES),
    'data.max_pixels': _int(above=0),
    'data.index_dir': STR,
    'data.max_unknown_token_rate': UNIT,
    'eval': GROUP,
    'eval.every': _int(low=0, wording='>= 0 (0 = at the final step only)'),
    'eval.tasks': Rule('strs'),      # each KIND=SPEC: check_eval_tasks below
    'eval.zeroshot': STR,
    'eval.templates': PATH_OR_SPEC,
    'eval.batch_size': _int(above=0),
    'log': GROUP,
    'log.wandb': GROUP,
    'log.wandb.project': STR,
    'log.wandb.entity': STR,
    'log.wandb.name': STR,
    'log.wandb.mode': Rule('str', choices=WANDB_MODES),
}


def _type_error(name: str, value: Any, rule: Rule) -> str | None:
  """Why `value` is not of the rule's kind, or None."""
  number = lambda v, kinds: isinstance(v, kinds) and not isinstance(v, bool)
  if rule.kind == 'int' and not number(value, int):
    return 'an integer'
  if rule.kind == 'float' and not number(value, (int, float)):
    return 'a number'
  if rule.kind == 'bool' and not isinstance(value, bool):
    return 'true or false'
  if rule.kind == 'str' and not isinstance(value, str):
    return 'a string'
  if rule.kind == 'group' and not isinstance(value, (ml_collections.ConfigDict, dict)):
    return 'a group of fields'
  if rule.kind in ('floats', 'ints', 'strs'):
    item = {'floats': (int, float), 'ints': int, 'strs': str}[rule.kind]
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, item) and not isinstance(v, bool) for v in value):
      return f'a list of {rule.kind[:-1]}s'
  return None


def _in_range(value: float, rule: Rule) -> bool:
  if value in rule.also:
    return True
  if isinstance(value, float) and not math.isfinite(value):
    return False
  return not ((rule.low is not None and value < rule.low)
              or (rule.above is not None and value <= rule.above)
              or (rule.high is not None and value > rule.high)
              or (rule.below is not None and value >= rule.below))


def check_field(name: str, value: Any, rule: Rule) -> None:
  """Raises a one-line ConfigError naming the field, the value and what is allowed."""
  wanted = _type_error(name, value, rule)
  if wanted:
    raise ConfigError(f'{name} must be {wanted}, got {value!r} ({type(value).__name__})')
  if rule.choices is not None and value not in rule.choices:
    raise ConfigError(f'unknown {name} {value!r}; known: {", ".join(map(str, rule.choices))}')
  if rule.nonempty and not value:
    raise ConfigError(f'{name} must not be empty')
  if rule.length is not None and len(value) != rule.length:
    raise ConfigError(f'{name} must have {rule.length} values, got {len(value)}: '
                      f'{tuple(value)!r}{rule.why}')
  items = value if rule.kind in ('floats', 'ints') else (
      [value] if rule.kind in ('int', 'float') else [])
  for item in items:
    if not _in_range(item, rule):
      shown = tuple(value) if rule.kind in ('floats', 'ints') else value
      each = 'each value ' if rule.kind in ('floats', 'ints') else ''
      raise ConfigError(f'{name} must be {each}{rule.allowed()}, got {shown!r}{rule.why}')


def check_custom(custom) -> None:
  """`model.custom` (variant 'custom'): known size keys, each a positive integer."""
  for key, value in dict(custom).items():
    if key not in SIZE_KEYS:
      raise ConfigError(f'unknown model.custom.{key}; sizes: {", ".join(SIZE_KEYS)}')
    check_field(f'model.custom.{key}', value, _int(above=0))


def split_eval_task(task: str) -> tuple[str, str]:
  """'zeroshot=shapes:zeroshot' -> ('zeroshot', 'shapes:zeroshot'); a bad one is a ConfigError."""
  kind, eq, spec = task.partition('=')
  if not eq or not spec:
    raise ConfigError(f'eval.tasks: {task!r} is not KIND=SPEC (e.g. zeroshot=shapes:zeroshot; '
                      f'kinds: {", ".join(EVAL_TASK_KINDS)})')
  if kind not in EVAL_TASK_KINDS:
    raise ConfigError(f'eval.tasks: unknown task kind {kind!r} in {task!r}; known: '
                      f'{", ".join(EVAL_TASK_KINDS)}')
  try:
    check_spec(spec)
  except ConfigError as e:
    raise ConfigError(f'eval.tasks: {e}') from None
  return kind, spec


def eval_tasks(eval_config) -> list[tuple[str, str]]:
  """(kind, spec) of every evaluation the trainer runs: eval.zeroshot first (when set), then
  eval.tasks, each once."""
  tasks = [f'zeroshot={eval_config.zeroshot}'] if eval_config.zeroshot else []
  tasks += [t for t in eval_config.tasks if t not in tasks]
  return [split_eval_task(task) for task in tasks]


def walk(config, prefix: str = '') -> list[tuple[str, Any]]:
  """(dotted name, value) of every field, groups before their fields; model.custom's keys not."""
  fields = []
  for key, value in config.items():
    name = prefix + key
    fields.append((name, value))
    if isinstance(value, (ml_collections.ConfigDict, dict)) and name != 'model.custom':
      fields.extend(walk(value, name + '.'))
  return fields


def check_fields(config, prefix: str = '') -> None:
  """Every field of `config` (the group at `prefix`, e.g. 'model.') against its rule; a field
  without one is an error: a typo in a config file would otherwise be ignored."""
  for name, value in walk(config, prefix):
    rule = RULES.get(name)
    if rule is None:
      raise ConfigError(f'config field {name} is not a known field (see configs/common.py)')
    check_field(name, value, rule)
    if name == 'model.custom':
      check_custom(value)
    if name == 'eval.tasks':
      for task in value:
        split_eval_task(task)


def check_matryoshka(loss, width: int) -> None:
  """`loss.matryoshka_dims`: ascending, unique, each <= the embedding `width`; the weights (if
  given) one per dim; one temperature per prefix only with prefixes."""
  dims, weights = tuple(loss.matryoshka_dims), tuple(loss.matryoshka_weights)
  if not dims and (weights or loss.matryoshka_per_prefix_temperature):
    raise ConfigError('loss.matryoshka_weights and loss.matryoshka_per_prefix_temperature need '
                      'loss.matryoshka_dims')
  if any(b <= a for a, b in zip(dims, dims[1:])):
    raise ConfigError(f'loss.matryoshka_dims must be ascending and unique, got {dims!r}')
  if dims and dims[-1] > width:
    raise ConfigError(f'loss.matryoshka_dims {dims!r}: {dims[-1]} is wider than the embedding '
                      f'({width}, model.variant)')
  if weights and len(weights) != len(dims):
    raise ConfigError(f'loss.matryoshka_weights must have one weight per matryoshka_dims entry '
                      f'({len(dims)}), got {len(weights)}: {weights!r}')
