"""Typed config sections: the command line's ConfigDict, section by section,
as frozen dataclasses that check themselves.

Each section's dataclass lives beside the code that reads it (DataConfig in
input_pipeline.py, ModelConfig in model.py, ...) and writes its checks once,
in `check`; construction and `from_section` both run them, so a bad value
fails in one line naming the key as the user typed it
(`data.batch_size must be positive, got 0`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing

import ml_collections
from ml_collections import config_dict


class Section:
  """Base of the section dataclasses. PREFIX: the section's name on the
  command line ('data.'); `check(v, prefix)` reads the fields from `v`."""
  PREFIX = ''

  @classmethod
  def check(cls, v, prefix: str) -> None:
    """Raises ValueError (one line) on a bad field of `v`."""

  def __post_init__(self):
    self.check(self, self.PREFIX)

  @classmethod
  def from_section(cls, section, prefix: str | None = None):
    """A ConfigDict section (or a dict) as this type; errors name the keys
    as `prefix` + key (default PREFIX)."""
    prefix = cls.PREFIX if prefix is None else prefix
    values = dict(section.items())
    fields = dataclasses.fields(cls)
    unknown = sorted(set(values) - {f.name for f in fields})
    if unknown:
      raise ValueError(f'unknown config key {prefix}{unknown[0]}')
    defaults = {f.name: f.default for f in fields
                if f.default is not dataclasses.MISSING}
    cls.check(types.SimpleNamespace(**{**defaults, **values}), prefix)
    return cls(**values)

  def to_dict(self) -> dict:
    """The section as the config file writes it (key: value)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def to_config_dict(self):
    """`to_dict` as a ConfigDict section; a None value is a placeholder of
    its field's type."""
    hints = typing.get_type_hints(type(self))
    values = {}
    for key, value in self.to_dict().items():
      if value is None:
        kind, = [a for a in typing.get_args(hints[key]) if a is not type(None)]
        value = config_dict.placeholder(kind)
      values[key] = value
    return ml_collections.ConfigDict(values)

  @classmethod
  def coerce(cls, cfg):
    """`cfg` if it is already this type, else `from_section(cfg)`."""
    return cfg if isinstance(cfg, cls) else cls.from_section(cfg)


def is_real(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def positive(key: str, value) -> None:
  if not (is_real(value) and value > 0):
    raise ValueError(f'{key} must be positive, got {value!r}')


def non_negative(key: str, value) -> None:
  if not (is_real(value) and value >= 0):
    raise ValueError(f'{key} must be >= 0, got {value!r}')


def int_at_least(key: str, value, low: int) -> None:
  if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= low):
    raise ValueError(f'{key} must be an int >= {low}, got {value!r}')


def one_of(key: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f'{key} must be one of {", ".join(allowed)}, got '
                     f'{value!r}')
