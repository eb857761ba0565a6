"""Tests for the data side (clrs_lib, batches, input_pipeline, splits): batch
contract, split caching, stream state, buckets."""
import os

import numpy as np
import pytest

from conftest import tiny_data_config
from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import input_pipeline
from dear_jax import splits

ALGORITHMS = clrs_lib.algorithm_names()


def _flat(batch):
  out = {f'{g}/{k}': v for g in ('inputs', 'hints', 'outputs')
         for k, v in batch[g].items()}
  out['lengths'] = batch['lengths']
  return out


def _assert_batches_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_thirty_algorithms():
  assert len(ALGORITHMS) == 30
  assert len(set(ALGORITHMS)) == 30


@pytest.mark.parametrize('algorithm', ALGORITHMS)
def test_train_batch_contract(algorithm, data_cfg):
  spec = clrs_lib.processed_spec(algorithm)
  batch = next(input_pipeline.TrainStream(algorithm, data_cfg, seed=0))
  b = data_cfg.batch_size
  n = batch_lib.num_nodes(batch)
  lengths = batch['lengths']
  assert lengths.dtype == np.int32 and lengths.shape == (b,)
  assert lengths.min() >= 1
  t = batch_lib.num_steps(batch)
  assert t == batch_lib.time_bucket(int(lengths.max()))

  size = input_pipeline.training_sizes(algorithm, data_cfg.train_sizes)[0]
  if algorithm == 'segments_intersect':
    assert n == 4  # always 4 points
  elif algorithm == 'optimal_bst':
    assert n == size + 1  # keys plus the dummy key
  else:
    assert n == size

  for stage, group in (('input', 'inputs'), ('output', 'outputs'),
                       ('hint', 'hints')):
    names = {k for k, v in spec.items() if v[0] == stage}
    assert set(batch[group]) == names, (stage, set(batch[group]), names)
    for name, x in batch[group].items():
      _, loc, type_ = spec[name]
      lead = (t, b) if stage == 'hint' else (b,)
      base = lead + {'node': (n,), 'edge': (n, n), 'graph': ()}[loc]
      if type_ == 'pointer':
        assert x.dtype == np.int32, (name, x.dtype)
        assert x.shape == base, (name, x.shape, base)
        assert x.min() >= 0 and x.max() < n, name
      else:
        assert x.dtype == np.float32, (name, x.dtype)
        if type_ == 'categorical':
          assert x.shape[:-1] == base and x.shape[-1] >= 2, (name, x.shape)
        elif type_ == 'permutation_pointer':
          assert x.shape == base + (n,), (name, x.shape)
          np.testing.assert_array_equal(x.sum(-1), 1.0)  # one-hot rows
        else:
          assert x.shape == base, (name, x.shape, base)
        if type_ in ('mask', 'mask_one', 'categorical'):
          assert set(np.unique(x)) <= {-1.0, 0.0, 1.0}, name
      if stage == 'hint':
        # Time padding (beyond the longest trajectory) is zeros.
        assert not np.any(x[int(lengths.max()):]), name
  # run.py's preprocessing: sorting outputs are enforced permutations,
  # pred_h becomes an input for PRED_AS_INPUT_ALGOS.
  if 'pred' in batch['outputs']:
    assert spec['pred'][2] == 'permutation_pointer'
    assert spec['pred_mask'][2] == 'mask_one'
  if algorithm in clrs_lib.PRED_AS_INPUT_ALGOS:
    assert 'pred' in batch['inputs'] and 'pred_h' not in batch['hints']


def test_train_pos_is_randomised(data_cfg):
  batch = next(input_pipeline.TrainStream('bfs', data_cfg, seed=0))
  pos = batch['inputs']['pos']
  n = pos.shape[1]
  assert not np.allclose(pos, np.arange(n) / n)
  assert np.all(np.diff(pos, axis=1) > 0) and pos.min() >= 0 and pos.max() < 1


def test_to_feedback_scores_truth_perfectly(data_cfg, clrs):
  spec = clrs_lib.processed_spec('topological_sort')
  batch = next(input_pipeline.TrainStream('topological_sort', data_cfg, seed=1))
  fb = clrs_lib.to_feedback(batch, spec)
  assert {dp.name for dp in fb.features.inputs} == set(batch['inputs'])
  preds = {dp.name: dp for dp in clrs_lib.datapoints(
      {k: v.astype(np.float32) for k, v in batch['outputs'].items()}, spec)}
  assert clrs.evaluate(fb.outputs, preds)['score'] == 1.0
  wrong = dict(preds)
  topo = batch['outputs']['topo']
  wrong['topo'] = clrs_lib.datapoints(
      {'topo': ((topo + 1) % topo.shape[1]).astype(np.float32)}, spec)[0]
  assert clrs.evaluate(fb.outputs, wrong)['score'] < 1.0


# --- splits ----------------------------------------------------------------

def _evalset_arrays(es):
  return dict(batches=es.batches, outputs=es.outputs, lengths=es.lengths)


def test_load_split_is_cached(tmp_path, monkeypatch):
  cfg = tiny_data_config(tmp_path)
  calls = []
  real_generate = splits._generate

  def counting(protocol):
    calls.append(protocol)
    return real_generate(protocol)

  monkeypatch.setattr(splits, '_generate', counting)
  first = splits.load_split('dfs', 'val', cfg, seed=0)
  assert len(calls) == 1
  files = os.listdir(tmp_path)
  assert len(files) == 1 and first.key in files[0]

  def fail(protocol):
    raise AssertionError('cached split regenerated')

  monkeypatch.setattr(splits, '_generate', fail)
  second = splits.load_split('dfs', 'val', cfg, seed=0)
  assert second.key == first.key and second.num_samples == first.num_samples
  assert len(second.batches) == len(first.batches) == 2
  for a, b in zip(first.batches, second.batches):
    _assert_batches_equal(a, b)
  np.testing.assert_array_equal(first.lengths, second.lengths)
  for k in first.outputs:
    np.testing.assert_array_equal(first.outputs[k], second.outputs[k])

  # Every parameter of the protocol changes the key, hence the file.
  monkeypatch.setattr(splits, '_generate', counting)
  keys = {first.key}
  for c, split, seed in (
      (tiny_data_config(tmp_path, val_num_samples=3), 'val', 0),
      (tiny_data_config(tmp_path, val_length=6), 'val', 0),
      (cfg, 'val', 1),
      (cfg, 'test', 0),
      (tiny_data_config(tmp_path, test_length=7), 'test', 0),
      (tiny_data_config(tmp_path, test_num_samples=3), 'test', 0)):
    keys.add(splits.load_split('dfs', split, c, seed=seed).key)
  assert len(keys) == 7
  assert len(os.listdir(tmp_path)) == 7
  assert len(calls) == 7
  # The test split does not depend on the training seed.
  assert splits.load_split('dfs', 'test', cfg, seed=5).key in keys
  assert len(calls) == 7


def test_val_split_seed_changes_content(data_cfg):
  a = splits.load_split('bfs', 'val', data_cfg, seed=0)
  b = splits.load_split('bfs', 'val', data_cfg, seed=1)
  assert a.key != b.key
  assert not np.array_equal(a.batches[0]['inputs']['pos'],
                            b.batches[0]['inputs']['pos'])
  # Validation uses random pos (run.py), at val_length nodes.
  pos = a.batches[0]['inputs']['pos']
  assert pos.shape[1] == data_cfg.val_length
  assert not np.allclose(pos, np.arange(pos.shape[1]) / pos.shape[1])


def test_test_split_is_official_protocol(data_cfg, clrs):
  """seed 3, default sampler kwargs, no random pos: identical to dm-clrs."""
  es = splits.load_split('bfs', 'test', data_cfg)
  k, n = data_cfg.test_num_samples, data_cfg.test_length
  sampler, _ = clrs.build_sampler('bfs', num_samples=k, length=n, seed=3)
  raw = sampler.next()
  assert es.num_samples == k
  np.testing.assert_array_equal(es.lengths, raw.features.lengths)
  for dp in raw.outputs:
    np.testing.assert_array_equal(es.outputs[dp.name], dp.data)
  t = batch_lib.time_bucket(int(raw.features.lengths.max()))
  for group, dps in (('inputs', raw.features.inputs),
                     ('hints', raw.features.hints), ('outputs', raw.outputs)):
    for dp in dps:
      got = np.concatenate([b[group][dp.name] for b in es.batches],
                           axis=1 if group == 'hints' else 0)
      if group == 'hints':
        assert got.shape[0] == t
        got = got[:dp.data.shape[0], :k]
        assert not np.any(np.concatenate(
            [b[group][dp.name] for b in es.batches], 1)[dp.data.shape[0]:])
      else:
        got = got[:k]
      # Identical up to the documented cast (float32 / int32 pointers).
      np.testing.assert_array_equal(got, np.asarray(dp.data).astype(got.dtype),
                                    err_msg=dp.name)
  pos = es.batches[0]['inputs']['pos']
  np.testing.assert_allclose(pos, np.broadcast_to(np.arange(n) / n, pos.shape),
                             rtol=1e-6)


def test_eval_batches_pad_last_by_repetition(tmp_path):
  cfg = tiny_data_config(tmp_path, test_num_samples=3)
  es = splits.load_split('bfs', 'test', cfg)
  assert es.num_samples == 3 and len(es.batches) == 2
  last = es.batches[1]
  for k, v in last['inputs'].items():
    np.testing.assert_array_equal(v[0], v[1])  # graph 2 repeated
  np.testing.assert_array_equal(last['outputs']['pi'][0],
                                es.outputs['pi'][2])
  # All batches share one padded step count.
  assert len({batch_lib.num_steps(b) for b in es.batches}) == 1


# --- training stream state -------------------------------------------------

def test_stream_state_round_trip(tmp_path):
  cfg = tiny_data_config(tmp_path, train_sizes=(4, 5, 6),
                         size_schedule='uniform')
  a = input_pipeline.TrainStream('bfs', cfg, seed=0)
  for _ in range(3):
    next(a)
  state = a.get_state()
  expected = [next(a) for _ in range(4)]
  assert len({batch_lib.num_nodes(x) for x in expected}) > 1
  b = input_pipeline.TrainStream('bfs', cfg, seed=7)
  fresh = next(input_pipeline.TrainStream('bfs', cfg, seed=7))
  b.set_state(state)
  for want in expected:
    _assert_batches_equal(next(b), want)
  # Without the state the streams differ (so the check above can fail).
  diff = (batch_lib.num_nodes(fresh) != batch_lib.num_nodes(expected[0]) or
          not np.array_equal(fresh['inputs']['pos'],
                             expected[0]['inputs']['pos']))
  assert diff


def test_stream_cycles_sizes(tmp_path):
  cfg = tiny_data_config(tmp_path, train_sizes=(4, 5, 6))
  s = input_pipeline.TrainStream('bfs', cfg, seed=0)
  assert [batch_lib.num_nodes(next(s)) for _ in range(6)] == [4, 5, 6] * 2


def test_string_matchers_train_at_five_quarters(tmp_path):
  cfg = tiny_data_config(tmp_path, train_sizes=(4, 8))
  s = input_pipeline.TrainStream('kmp_matcher', cfg, seed=0)
  assert batch_lib.num_nodes(next(s)) == 10


# --- time buckets ----------------------------------------------------------

def test_time_bucket_properties():
  values = [batch_lib.time_bucket(s) for s in range(1, 3000)]
  assert values[:8] == [2, 2, 3, 4, 6, 6, 8, 8]
  prev = 0
  for steps, b in zip(range(1, 3000), values):
    assert b >= steps and b >= 2
    assert b >= prev  # monotone
    prev = b
    if steps >= 2:
      assert b <= 1.5 * steps, (steps, b)
  # logarithmically many distinct shapes
  assert len(set(values)) <= 2 * int(np.log2(3000)) + 2


@pytest.mark.parametrize('algorithm', ['bfs', 'binary_search'])
def test_default_split_sizes_are_dm_clrs_official_counts(algorithm, clrs):
  """configs/default.py leaves val/test_num_samples None: run.py's
  validation count and dataset.py's test count, computed by dm-clrs's code,
  under the same cache keys as the counts written out."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from clrs._src import dataset, samplers  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  cfg = train.data_config(default.get_config())
  assert cfg.val_num_samples is None and cfg.test_num_samples is None
  mult = clrs.CLRS_30_ALGS_SETTINGS[algorithm]['num_samples_multiplier']
  # clrs/examples/run.py: CLRS30['val'] count times multiplier=2 * mult.
  want = dict(val=samplers.CLRS30['val']['num_samples'] * 2 * mult)
  fake = types.SimpleNamespace(
      _builder_config=types.SimpleNamespace(split='test'))
  want['test'] = dataset.CLRSDataset._num_samples(fake, algorithm)  # pylint: disable=protected-access
  explicit = dataclasses.replace(cfg, val_num_samples=want['val'],
                                 test_num_samples=want['test'])
  for split in ('val', 'test'):
    got = splits._split_protocol(algorithm, split, cfg, 0)  # pylint: disable=protected-access
    assert got['num_samples'] == want[split]
    assert clrs_lib.protocol_key(got) == clrs_lib.protocol_key(
        splits._split_protocol(algorithm, split, explicit, 0))  # pylint: disable=protected-access


def test_graph_scores_are_each_graphs_own_score(data_cfg):
  """train.evaluate's graph_scores: a pointer output scores the share of a
  graph's nodes whose pointer is right (numpy transcription), graph by graph,
  whatever its batchmates got wrong."""
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  test = splits.load_split('bfs', 'test', data_cfg)
  truth = test.outputs['pi']
  n = truth.shape[1]
  pred = truth.copy()
  pred[0, :2] = (truth[0, :2] + 1) % n       # graph 0: two nodes wrong
  pred[1] = (truth[1] + 1) % n                # graph 1: every node wrong
  got = train.graph_scores(test, {'pi': pred})
  want = [float(np.mean(p == t)) for p, t in zip(pred, truth)]
  assert len(got) == test.num_samples
  np.testing.assert_allclose(got, want)
  assert got[0] == pytest.approx(1 - 2 / n) and got[1] == 0.0
  assert all(g == 1.0 for g in got[2:])
