"""The stepwise NAR that learns when to stop (DEAR's NAR (LT)).

Its loss against a transcription of DEAR's `get_termination_loss`, its
stopping rule with hand-set heads, and that a test graph's true length never
reaches its predictions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dear_jax import clrs_lib
from dear_jax import groups
from dear_jax import nar
from dear_jax import splits
from tests.conftest import model_config, tiny_data_config

pytestmark = pytest.mark.usefixtures('fast_compile')


def _bce(x, y):
  """torch's binary_cross_entropy_with_logits, elementwise, in numpy."""
  return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _dear_termination_loss(all_continue_logits, lengths):
  """DEAR's `get_termination_loss` (models/algorithm_reasoner.py), in numpy:
  one BCE per step over the graphs not yet terminated, stopping at the
  first step where all are, then the mean over steps."""
  losses = []
  for step_idx, cls in enumerate(all_continue_logits):
    true_continuation = ~(step_idx + 1 >= lengths - 1)
    already_terminated = step_idx >= lengths - 1
    if already_terminated.all():
      break
    keep = ~already_terminated
    losses.append(_bce(cls[keep], true_continuation[keep].astype(float)).mean())
  return np.mean(losses) if losses else 0.0


def test_termination_loss_matches_dears():
  rng = np.random.RandomState(0)
  for lengths in ([2, 4, 6], [3, 3, 3], [5, 2, 7, 4]):
    lengths = np.array(lengths)
    logits = rng.normal(size=(8, len(lengths))) * 3
    got = nar.termination_loss(jnp.asarray(logits), jnp.asarray(lengths))
    np.testing.assert_allclose(got, _dear_termination_loss(logits, lengths),
                               rtol=1e-5)


@pytest.fixture(scope='module')
def bfs(tmp_path_factory):
  """A no-hint BFS NAR with a termination head, its params and two test
  batches (n=5, with hints as the loop gives them)."""
  cfg = tiny_data_config(str(tmp_path_factory.mktemp('lt')))
  test = splits.load_split('bfs', 'test', cfg)
  spec = clrs_lib.processed_spec('bfs')
  model = nar.StepwiseNAR(spec, test.batches[0], model_config(hidden=8),
                          'none', learn_termination=True,
                          max_steps_factor=1.0)
  params = model.init(jax.random.PRNGKey(0), test.batches[0])
  return model, params, test.batches


def _set_head(params, kernel=0.0, bias=0.0):
  p = dict(params)
  lin = params['termination']['linear']
  p['termination'] = {'linear': {'kernel': jnp.full_like(lin['kernel'], kernel),
                                 'bias': jnp.full_like(lin['bias'], bias)}}
  return p


def test_loss_adds_dears_termination_loss_of_the_unrolled_states(bfs):
  """forward's termination loss equals DEAR's on the head's logits of the
  states after each step, computed here by calling the processor step by
  step (not the model's scan)."""
  model, params, batches = bfs
  params = _set_head(params, kernel=0.7, bias=0.2)
  batch = batches[0]
  _, _, aux = model.forward(params, batch, training=True,
                            key=jax.random.PRNGKey(1))
  n = 5
  node, edge, graph, adj = model.encode(params, batch['inputs'], n)
  adj = model.adjacency(batch, adj)
  h = jnp.zeros(node.shape)
  logits = []
  lin = params['termination']['linear']
  for _ in range(next(iter(batch['hints'].values())).shape[0] - 1):
    h, _ = model.process(params['processor'], node, edge, graph, adj, h)
    pooled = np.asarray(h).max(axis=1)
    logits.append(pooled @ np.asarray(lin['kernel'])[:, 0] +
                  float(lin['bias'][0]))
  want = _dear_termination_loss(np.stack(logits), np.asarray(batch['lengths']))
  assert want > 0
  np.testing.assert_allclose(aux['termination_loss'], want, rtol=1e-4)
  total, _ = model.loss(params, batch, jax.random.PRNGKey(1))
  no_head, _ = nar.StepwiseNAR.__mro__[1].loss(model, params, batch,
                                               jax.random.PRNGKey(1))
  np.testing.assert_allclose(total - no_head, want, rtol=1e-4, atol=1e-6)


def _told(model, params, batch, steps):
  """The same network told to run `steps` steps on every graph (the NAR
  with true lengths, lengths = steps + 1)."""
  told = nar.StepwiseNAR(model.spec, batch, model_config(hidden=8), 'none')
  b = dict(batch, hints={}, lengths=np.full_like(batch['lengths'], steps + 1))
  outs, _, _ = told.forward({k: v for k, v in params.items()
                             if k != 'termination'}, b, training=False,
                            key=jax.random.PRNGKey(0))
  return outs


@pytest.mark.parametrize('bias, steps, capped', [(-1.0, 1, False),
                                                 (1.0, 5, True)])
def test_hand_set_head_stops_where_it_says(bfs, bias, steps, capped):
  """A bias-only head: negative stops every graph after its first step;
  positive never stops, so each runs to the cap, ceil(1.0 * n) = 5 steps.
  The outputs are the told NAR's after that many steps."""
  model, params, batches = bfs
  params = _set_head(params, bias=bias)
  outs, _, aux = model.forward(params, batches[0], training=False,
                               key=jax.random.PRNGKey(0))
  assert aux['nar_steps'].tolist() == [steps, steps]
  assert aux['nar_capped'].tolist() == [capped, capped]
  assert int(aux['nar_step_cap']) == 5
  want = _told(model, params, batches[0], steps)
  for k in want:
    np.testing.assert_allclose(outs[k], want[k], rtol=1e-5, atol=1e-5)
  other = _told(model, params, batches[0], 3)  # the check can fail
  assert any(not np.allclose(outs[k], other[k]) for k in want)


def test_each_graph_stops_on_its_own():
  """The loop with a counting step and a head that says stop once graph
  b's counter reaches stop[b]: each graph's ends freeze at its own stop,
  the loop runs until every graph stopped or the cap."""
  model = object.__new__(nar.StepwiseNAR)
  stop = jnp.array([1, 3, 2, 9])
  model.continue_logits = lambda params, h: stop - h[:, 0, 0] - 0.5
  calls = []

  def step(hidden, i, fed):
    del fed
    calls.append(i)
    h_new = hidden + 1
    return h_new, {}, dict(h_new=h_new, at=jnp.broadcast_to(i, (4,)))

  ends, aux = model._until_stop(None, step, jnp.zeros((4, 2, 3)), cap=6)  # pylint: disable=protected-access
  assert aux['nar_steps'].tolist() == [1, 3, 2, 6]
  assert aux['nar_capped'].tolist() == [False, False, False, True]
  assert ends['h_new'][:, 0, 0].tolist() == [1, 3, 2, 6]
  assert ends['at'].tolist() == [0, 2, 1, 5]
  ends, aux = model._until_stop(None, step, jnp.zeros((4, 2, 3)), cap=20)  # pylint: disable=protected-access
  assert aux['nar_steps'].tolist() == [1, 3, 2, 9]
  assert not aux['nar_capped'].any()


def test_predictions_never_read_the_true_length(bfs):
  """predict's outputs and steps are the same when the batch's lengths are
  garbage, or gone along with its hints (whose padded length would tell the
  batch's longest)."""
  model, params, batches = bfs
  params = _set_head(params, kernel=3.0, bias=-0.5)
  predict = jax.jit(model.predict)
  for batch in batches:
    want, want_aux = predict(params, batch)
    garbage = dict(batch, lengths=np.array([1000, -3], np.int32))
    bare = {k: v for k, v in batch.items() if k not in ('lengths', 'hints')}
    bare['hints'] = {}
    for other in (garbage, bare):
      got, got_aux = predict(params, other)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])
      np.testing.assert_array_equal(got_aux['nar_steps'],
                                    want_aux['nar_steps'])


def test_learn_termination_needs_no_hints():
  with pytest.raises(ValueError, match='needs nar.hint_mode=none'):
    nar.NarConfig(hint_mode='encoded_decoded', learn_termination=True)
  with pytest.raises(ValueError, match='max_steps_factor must be positive'):
    nar.NarConfig(hint_mode='none', learn_termination=True,
                  max_steps_factor=0)


def test_termination_summary_counts_early_exact_late():
  s = nar.termination_summary([1, 3, 5, 4], [False, False, True, False],
                              lengths=[3, 4, 2, 5], cap=5)
  # true steps 2, 3, 1, 4
  assert s['nar_stopped_early_fraction'] == 0.25
  assert s['nar_stopped_exact_fraction'] == 0.5
  assert s['nar_stopped_late_fraction'] == 0.25
  assert s['nar_cap_hit_fraction'] == 0.25
  assert s['nar_steps_mean'] == 3.25 and s['nar_true_steps_mean'] == 2.5
  assert s['nar_true_steps'] == [2, 3, 1, 4] and s['nar_step_cap'] == 5


@pytest.mark.parametrize('chunk', [1, 2])
def test_graph_at_a_time_evaluation_predicts_what_the_batch_does(
    bfs, monkeypatch, tmp_path, chunk):
  """On a CPU predict runs one graph at a time (groups.EVAL_CHUNK_CPU): the
  outputs and the steps each graph took equal those of the whole batch run
  as one loop (chunk 0), with and without the termination head, and with
  hints fed back (graphs of different lengths in one batch)."""
  from dear_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  lt_model, lt_params, _ = bfs
  cfg = tiny_data_config(str(tmp_path), test_length=8, test_num_samples=8,
                         eval_batch_size=8)
  batch = splits.load_split('bfs', 'test', cfg).batches[0]
  assert len(set(np.asarray(batch['lengths']).tolist())) > 1
  spec = clrs_lib.processed_spec('bfs')
  hints = nar.StepwiseNAR(spec, batch, model_config(hidden=8),
                          'encoded_decoded')
  cases = [(lt_model, _set_head(lt_params, kernel=3.0, bias=-0.5)),
           (hints, hints.init(jax.random.PRNGKey(1), batch))]
  traced = []  # graphs per loop, as each trace saw them
  real = model_lib.Reasoner.predict

  def recording(self, params, group, key=None):
    traced.append(group['inputs']['pos'].shape[0])
    return real(self, params, group, key)

  monkeypatch.setattr(model_lib.Reasoner, 'predict', recording)
  for m, params in cases:
    got = {}
    for c in (0, chunk):
      monkeypatch.setattr(groups, 'EVAL_CHUNK_CPU', c)
      # A new function each time: jit wrappers of one bound method share a
      # trace cache, and the chunk is read when tracing.
      got[c] = jax.jit(lambda p, b, m=m: m.predict(p, b))(params, batch)
    assert traced[-2:] == [8, chunk]
    (want, want_aux), (out, aux) = got[0], got[chunk]
    assert want.keys() == out.keys() and want
    for k in want:
      np.testing.assert_allclose(out[k], want[k], rtol=1e-6, atol=1e-6)
    assert set(aux) == set(want_aux)
    for k in want_aux:
      np.testing.assert_array_equal(aux[k], want_aux[k])


def test_in_graph_groups_regroups_every_leaf():
  """groups.in_graph_groups against the plain call: graphs first everywhere
  but in the hints (time first), a per-batch scalar kept once."""
  rng = np.random.default_rng(0)
  batch = dict(inputs={'x': rng.normal(size=(6, 3)).astype(np.float32)},
               hints={'h': rng.normal(size=(4, 6, 3)).astype(np.float32)},
               lengths=np.arange(6, dtype=np.int32))

  def fn(b):
    return dict(per_graph=b['inputs']['x'].sum(-1) + b['hints']['h'][-1, :, 0],
                steps=b['lengths'] * 2, cap=jnp.asarray(7))

  want = fn(batch)
  calls = []
  for chunk in (1, 2, 3, 4):  # groups of 1, 2, 3 and gcd(6, 4) = 2 graphs
    got = groups.in_graph_groups(
        lambda b: (calls.append(b['inputs']['x'].shape), fn(b))[1],
        batch, chunk)
    np.testing.assert_allclose(got['per_graph'], want['per_graph'], rtol=1e-6)
    np.testing.assert_array_equal(got['steps'], want['steps'])
    assert int(got['cap']) == 7
  assert calls == [(1, 3), (2, 3), (3, 3), (2, 3)]
  assert groups.in_graph_groups(fn, batch, 0)['per_graph'].shape == (6,)
