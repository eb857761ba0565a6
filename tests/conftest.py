"""Shared fixtures: a tiny data protocol cached under pytest's tmp dir, tiny models."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import ml_collections  # noqa: E402
import pytest  # noqa: E402

from dear_jax import data as data_lib  # noqa: E402


def pytest_addoption(parser):
  parser.addoption(
      '--all-algorithms', action='store_true', default=False,
      help='test_models.py: compile, train and evaluate all 30 algorithms in '
      'both hint modes (about 8 min on 2 CPU cores) instead of tracing most')


def tiny_data_config(cache_dir, **overrides) -> data_lib.DataConfig:
  """Graphs of 5 nodes for training/validation, 6 for test; 4 eval graphs."""
  kw = dict(train_sizes=(5,), batch_size=2, val_length=5, test_length=6,
            val_num_samples=4, test_num_samples=4, eval_batch_size=2,
            cache_dir=str(cache_dir))
  kw.update(overrides)
  return data_lib.DataConfig(**kw)


def model_config(hidden=16, processor='triplet_gmpnn', nb_triplet_fts=8,
                 encoder_init='xavier_on_scalars') -> ml_collections.ConfigDict:
  """The `model` config section StepwiseNAR/Reasoner read."""
  return ml_collections.ConfigDict(dict(
      hidden=hidden, processor=processor, nb_triplet_fts=nb_triplet_fts,
      encoder_init=encoder_init))


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('datasets')


@pytest.fixture(scope='session')
def data_cfg(cache_dir) -> data_lib.DataConfig:
  return tiny_data_config(cache_dir)


@pytest.fixture(scope='session')
def clrs():
  return data_lib.clrs()
