"""data.better_search: binary_search without targets above every element."""

import numpy as np

from conftest import tiny_data_config
from dear_jax import clrs_lib
from dear_jax import input_pipeline
from dear_jax import splits


def _above_max(batch) -> np.ndarray:
  """Per graph: is the target above every element of the array?"""
  key, target = batch['inputs']['key'], batch['inputs']['target']
  return target > key.max(axis=1)


def _assert_clrs_answer(batch):
  """The output is binary search's answer: the first index whose key is
  >= target, clamped to the last index (dm-clrs's rule), computed here
  independently with numpy."""
  key, target = batch['inputs']['key'], batch['inputs']['target']
  want = np.minimum([np.searchsorted(k, t, side='left')
                     for k, t in zip(key, target)], key.shape[1] - 1)
  np.testing.assert_array_equal(batch['outputs']['return'].argmax(-1), want)


def _whole(evalset) -> dict:
  """A split's inputs and outputs as one batch."""
  n = evalset.num_samples
  inputs = {k: np.concatenate([b['inputs'][k] for b in evalset.batches])[:n]
            for k in evalset.batches[0]['inputs']}
  return dict(inputs=inputs, outputs=evalset.outputs)


def test_sampler_swaps_exactly_the_targets_above_max(clrs):
  """Same seed: dm-clrs's sampler and ours draw the same numbers; ours
  differs only where the target exceeded the array, by a swap."""
  kw = dict(num_samples=300, length=5, seed=7)
  plain = clrs_lib.build_sampler('binary_search', None, **kw).next()
  better = clrs_lib.build_sampler('binary_search', 'better_search', **kw).next()
  get = lambda fb, name: next(dp.data for dp in fb.features.inputs
                              if dp.name == name)
  k0, t0 = get(plain, 'key'), get(plain, 'target')
  k1, t1 = get(better, 'key'), get(better, 'target')
  above = t0 > k0.max(axis=1)
  assert 20 < above.sum() < 100  # about 1 in 6 at n=5
  assert not (t1 > k1.max(axis=1)).any()
  np.testing.assert_array_equal(k1[~above], k0[~above])
  np.testing.assert_array_equal(t1[~above], t0[~above])
  np.testing.assert_array_equal(t1[above], k0[above, -1])
  np.testing.assert_array_equal(k1[above, -1], t0[above])
  np.testing.assert_array_equal(k1[above, :-1], k0[above, :-1])
  assert (np.diff(k1, axis=1) >= 0).all()  # still sorted


def test_splits_and_stream_follow_the_option(tmp_path):
  off = tiny_data_config(tmp_path, test_num_samples=48, val_num_samples=48,
                         batch_size=48)
  on = tiny_data_config(tmp_path, test_num_samples=48, val_num_samples=48,
                        batch_size=48, better_search=True)
  for split in ('val', 'test'):
    a = splits.load_split('binary_search', split, off)
    b = splits.load_split('binary_search', split, on)
    assert a.key != b.key  # cached splits of the two protocols never mix
    batch_a, batch_b = _whole(a), _whole(b)
    assert _above_max(batch_a).any(), split
    assert not _above_max(batch_b).any(), split
    _assert_clrs_answer(batch_a)
    _assert_clrs_answer(batch_b)
  stream_off = next(input_pipeline.TrainStream('binary_search', off, seed=0))
  stream_on = next(input_pipeline.TrainStream('binary_search', on, seed=0))
  assert _above_max(stream_off).any()
  assert not _above_max(stream_on).any()
  _assert_clrs_answer(stream_on)
  recorded = lambda cfg, algo: input_pipeline.RecordedStream(algo, cfg, 0)._dir  # pylint: disable=protected-access
  assert recorded(off, 'binary_search') != recorded(on, 'binary_search')
  # Other algorithms: the option changes nothing, keys included.
  assert recorded(off, 'bfs') == recorded(on, 'bfs')
  for split in ('val', 'test'):
    assert (splits._split_protocol('minimum', split, off, 0) ==  # pylint: disable=protected-access
            splits._split_protocol('minimum', split, on, 0))  # pylint: disable=protected-access
