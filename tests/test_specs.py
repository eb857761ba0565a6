"""dear_jax.specs holds exactly dm-clrs's spec constants."""

import pytest

from dear_jax import clrs_lib
from dear_jax import specs


def _constants(cls) -> dict:
  return {k: v for k, v in vars(cls).items() if k.isupper()}


@pytest.mark.parametrize('name', ['Stage', 'Location', 'Type'])
def test_spec_constants_equal_dm_clrs(name):
  clrs = clrs_lib.clrs()
  assert _constants(getattr(specs, name)) == _constants(getattr(clrs, name))


def test_every_spec_entry_uses_the_vocabulary():
  """Each (stage, location, type) of all 30 algorithms is a known constant,
  so no branch on a string literal can silently miss a case."""
  stages = set(_constants(specs.Stage).values())
  locations = set(_constants(specs.Location).values())
  types = set(_constants(specs.Type).values())
  for algorithm in clrs_lib.algorithm_names():
    for stage, loc, type_ in clrs_lib.processed_spec(algorithm).values():
      assert stage in stages and loc in locations and type_ in types
