"""The field -> rule table: it covers every field, and a bad value of each kind is a one-line error."""

import math

import ml_collections
import pytest

from configs.common import base_config
from data.errors import ConfigError
from pretrain.config.cli import load_config_file
from pretrain.config.rules import RULES, Rule, check_field, walk
from pretrain.config.validate import check_training
from tests.lowering_cases import lit_base  # noqa: F401  (fixture)

CONFIG_FILES = ['configs/demo.py', 'configs/demo.py:tiny', 'configs/clip_vit_b32.py',
                'configs/clip_vit_b32.py:shapes', 'configs/align.py:tiny', 'configs/align.py:b7',
                'configs/align.py:l2', 'configs/clip.py:l14', 'configs/siglip.py:so400m', 'lit']


def test_every_field_has_a_rule():
  fields = {name for name, _ in walk(base_config())}
  assert fields - set(RULES) == set(), 'add a rule to pretrain/config/rules.py for each new field'
  assert set(RULES) - fields == set(), 'a rule for a field that no longer exists'


def bad_values(rule: Rule, good) -> list[tuple[str, object]]:
  """(kind of mistake, value) pairs that `rule` must refuse."""
  # (A bool in a float field is not tried: ConfigDict itself turns True into 1.0.)
  wrong_type = {'int': ['seven', 1.5, True], 'float': ['seven', None], 'bool': [1, 'yes'],
                'str': [3], 'floats': ['0.5', (0.5, 'a')], 'ints': [3, (1.5,)],
                'strs': ['x', (1,)], 'group': [5]}[rule.kind]
  values = [('type', v) for v in wrong_type]
  step = 1 if rule.kind in ('int', 'ints') else 0.5
  one = lambda v: (tuple([v] * max(len(good), 1)) if rule.kind in ('floats', 'ints') else v)
  if rule.low is not None:
    values.append(('range', one(rule.low - step)))
  if rule.above is not None:
    values.append(('range', one(rule.above)))
  if rule.high is not None:
    values.append(('range', one(rule.high + step)))
  if rule.below is not None:
    values.append(('range', one(rule.below)))
  if rule.kind == 'float':
    values.append(('range', math.nan))
  if rule.length is not None:
    values += [('length', tuple(good)[:-1]), ('length', tuple(good) * 2)]
  if rule.choices is not None:
    values.append(('choice', 'no_such_choice'))
  if rule.nonempty:
    values.append(('empty', ''))
  return values


def _config(spec: str, lit_dir: str):
  return load_config_file(f'configs/lit.py:{lit_dir}' if spec == 'lit' else spec)


def _with(config, name: str, value):
  """A copy of `config` (types unchecked, as a config file may write them) with name = value."""
  copy = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  *parents, leaf = name.split('.')
  node = copy
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  return copy


@pytest.mark.parametrize('spec', CONFIG_FILES)
def test_a_bad_value_of_each_kind_in_every_field_is_refused(spec, lit_base):  # noqa: F811
  config = _config(spec, lit_base)
  check_training(config, 8, 1)  # the file itself is valid
  tried = 0
  for name, good in walk(config):
    for kind, value in bad_values(RULES[name], good):
      with pytest.raises(ConfigError) as error:
        check_training(_with(config, name, value), 8, 1)
      message = str(error.value)
      assert name in message and '\n' not in message, (spec, name, kind, value, message)
      tried += 1
  assert tried > 150


@pytest.mark.parametrize('name, value, message', [
    ('model.image_mean', (0.1, 0.2),
     'model.image_mean must have 3 values, got 2: (0.1, 0.2) (one per RGB channel'),
    ('model.image_std', (0.5, 0.0, 0.5), 'model.image_std must be each value positive, got'),
    ('optim.b2', 1.5, 'optim.b2 must be at least 0.0 and below 1.0, got 1.5'),
    ('seed', -1, 'seed must be at least 0 and at most 4294967295, got -1'),
    ('batch_size', 0, 'batch_size must be positive, got 0'),
    ('model.context_length', 0, 'model.context_length must be at least 2, got 0'),
    ('mesh.fsdp', 0, 'mesh.fsdp must be -1 (the rest) or at least 1, got 0'),
    ('seed', 1.5, 'seed must be an integer, got 1.5 (float)'),
    ('model.dtype', 'fp16', "unknown model.dtype 'fp16'; known: float32, bfloat16"),
    ('optim.lr', math.inf, 'optim.lr must be positive, got inf'),
    ('eval.every', -1, 'eval.every must be >= 0 (0 = at the final step only), got -1'),
    ('eval.tasks', ('zeroshot=shapes:zeroshot', 'knn=shapes:zeroshot'),
     "eval.tasks: unknown task kind 'knn' in 'knn=shapes:zeroshot'; known: zeroshot, retrieval"),
    ('eval.tasks', ('shapes:retrieval',), "eval.tasks: 'shapes:retrieval' is not KIND=SPEC"),
    ('eval.tasks', ('retrieval=nope:x',), "eval.tasks: unknown data kind 'nope' in spec"),
])
def test_messages_name_field_value_and_what_is_allowed(name, value, message):
  with pytest.raises(ConfigError) as error:
    check_training(_with(base_config(), name, value), 8, 1)
  assert message in str(error.value)


def test_a_typo_in_a_config_file_is_an_unknown_field():
  config = ml_collections.ConfigDict(base_config().to_dict())
  config.model.imagesize = 64
  with pytest.raises(ConfigError, match='config field model.imagesize is not a known field'):
    check_training(config, 8, 1)


def test_custom_sizes_are_checked():
  config = base_config()
  config.model.variant = 'custom'
  config.model.custom = ml_collections.ConfigDict(dict(patch=4, image_width=0))
  with pytest.raises(ConfigError, match='model.custom.image_width must be positive, got 0'):
    check_training(config, 8, 1)
  check_field('model.ops', 'stock', RULES['model.ops'])
  with pytest.raises(ConfigError, match="unknown model.ops 'gpu'; known: auto, stock, cpu"):
    check_field('model.ops', 'gpu', RULES['model.ops'])
