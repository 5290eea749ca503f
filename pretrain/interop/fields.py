"""Reading another library's architecture JSON: every field the converters use, typed and ranged.

A field that is missing (where the library has no default) or has a value our towers cannot take is a
one-line ConfigError naming it as the source file spells it (`vision_cfg.width`), never a KeyError
or a shape error deep in the model.
"""

import numbers

from data.errors import ConfigError, require

REQUIRED = object()  # The library has no default for the field: the JSON must give it.


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


# kind -> (test, what the message says the value must be)
KINDS = {
    'pos_int': (lambda v: _is_int(v) and v > 0, 'a positive integer'),
    'int': (_is_int, 'an integer'),
    'pos_number': (lambda v: _is_number(v) and v > 0, 'a positive number'),
    'number': (_is_number, 'a number'),
    'bool': (lambda v: isinstance(v, bool), 'true or false'),
    'str': (lambda v: isinstance(v, str), 'a string'),
    'rgb': (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_number, v)),
            'a list of 3 numbers (R, G, B)'),
    'pos_rgb': (lambda v: (isinstance(v, (list, tuple)) and len(v) == 3
                           and all(_is_number(x) and x > 0 for x in v)),
                'a list of 3 positive numbers (R, G, B)'),
}


def field(cfg: dict, name: str, where: str, kind: str, default=REQUIRED):
  """`cfg[name]` (or `default` when absent), checked to be of `kind`; `where` prefixes the name."""
  if name not in cfg or (cfg[name] is None and default is not REQUIRED):
    if default is REQUIRED:
      raise ConfigError(f'{where}{name} is missing; the architecture file must give it')
    return default
  value = cfg[name]
  test, what = KINDS[kind]
  require(test(value), f'{where}{name}={value!r} must be {what}')
  return value


def section(cfg: dict, name: str, where: str) -> dict:
  """A nested object of the config (absent or null: empty, every field at its default)."""
  value = cfg.get(name)
  if value is None:
    return {}
  require(isinstance(value, dict), f'{where}{name} must be a JSON object, got {value!r}')
  return value


def divides(part: int, whole: int, part_name: str, whole_name: str) -> None:
  """One-line error unless `part` divides `whole` (heads into width, patch into image)."""
  require(whole % part == 0, f'{whole_name}={whole} is not a multiple of {part_name}={part}')
