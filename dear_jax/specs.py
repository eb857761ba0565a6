"""dm-clrs's spec vocabulary (stage, location, type), without TensorFlow.

`clrs.Stage`, `clrs.Location` and `clrs.Type` are plain string constants, but
importing them imports all of dm-clrs, TensorFlow included. The models only
need the strings: these classes hold the same values (tests/test_specs.py
compares them with dm-clrs's), so encoders, decoders and losses never import
the data pipeline.
"""


class Stage:
  INPUT = 'input'
  OUTPUT = 'output'
  HINT = 'hint'


class Location:
  NODE = 'node'
  EDGE = 'edge'
  GRAPH = 'graph'


class Type:
  SCALAR = 'scalar'
  CATEGORICAL = 'categorical'
  MASK = 'mask'
  MASK_ONE = 'mask_one'
  POINTER = 'pointer'
  SHOULD_BE_PERMUTATION = 'should_be_permutation'
  PERMUTATION_POINTER = 'permutation_pointer'
  SOFT_POINTER = 'soft_pointer'
