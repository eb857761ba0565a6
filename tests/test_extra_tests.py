"""Tests at further sizes (data.extra_test_lengths): their splits, their
batch sizes, and what a run writes for them."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from dear_jax import checkpoints
from dear_jax import clrs_lib
from dear_jax import factory
from dear_jax import splits
from dear_jax import train
from tests.conftest import tiny_config, tiny_data_config

pytestmark = pytest.mark.usefixtures('fast_compile')

# Inputs and outputs that run.py's preprocessing leaves as sampled.
UNPROCESSED = {'bfs': ('adj', 's', 'pi'), 'binary_search': ('key', 'target'),
               'insertion_sort': ('key',)}


@pytest.mark.parametrize('algorithm', sorted(UNPROCESSED))
def test_extra_test_is_clrs_sampled_like_the_official_test(algorithm,
                                                           tmp_path):
  """dm-clrs's own sampler, called with the official test seed at the new
  size and count, gives the same graphs (sorting and search included)."""
  cfg = tiny_data_config(str(tmp_path), extra_test_num_samples=3)
  got = splits.load_extra_test(algorithm, 9, cfg)
  clrs = clrs_lib.clrs()
  sampler, _ = clrs.build_sampler(algorithm, num_samples=3, length=9,
                                  seed=clrs.CLRS30['test']['seed'])
  want = sampler.next()
  arrays = {dp.name: dp.data for dp in
            list(want.features.inputs) + list(want.outputs)}
  assert got.num_samples == 3
  np.testing.assert_array_equal(got.lengths, want.features.lengths)
  for name in UNPROCESSED[algorithm]:
    part = 'inputs' if name in got.batches[0]['inputs'] else 'outputs'
    stacked = np.concatenate([b[part][name] for b in got.batches])[:3]
    np.testing.assert_array_equal(stacked, arrays[name].astype(stacked.dtype))
  # Cached: a second load generates nothing.
  real = splits._generate  # pylint: disable=protected-access
  try:
    splits._generate = None  # pylint: disable=protected-access
    again = splits.load_extra_test(algorithm, 9, cfg)
  finally:
    splits._generate = real  # pylint: disable=protected-access
  assert again.key == got.key


def test_extra_test_at_the_official_size_and_count_is_the_official_test(
    tmp_path):
  cfg = tiny_data_config(str(tmp_path))  # test_length 5, 4 graphs
  official = splits.load_split('bfs', 'test', cfg)
  cfg = tiny_data_config(str(tmp_path), extra_test_num_samples=4)
  assert splits.load_extra_test('bfs', 5, cfg).key == official.key
  assert splits.load_extra_test('bfs', 6, cfg).key != official.key


def test_eval_batches_hold_no_more_node_pairs_than_the_official_tests():
  cfg = tiny_data_config('/unused', eval_batch_size=32, test_length=64)
  got = {n: splits.eval_batch_size(n, cfg) for n in (16, 64, 100, 128, 256,
                                                     512)}
  assert got == {16: 32, 64: 32, 100: 13, 128: 8, 256: 2, 512: 1}
  for n, b in got.items():
    assert b * n * n <= 32 * 64 * 64 or b == 1


def _tiny_dear(tmp_path, sizes: tuple, graphs: int):
  """A 2-step gated max-MPNN DEAR, tested at `sizes` on `graphs` graphs."""
  config = tiny_config(tmp_path / 'data', kind='dear', steps=2)
  config.model.processor = 'gmpnn'
  config.model.hidden = 8
  config.dear.diagnostics = False
  config.data.extra_test_lengths = sizes
  config.data.extra_test_num_samples = graphs
  return config


def test_run_writes_each_size_scored_as_evaluate_scores_it(tmp_path):
  """results.json 'extra_tests': per size the score of the best parameters
  on that split, its graphs, batch size and DEAR's iterations."""
  config = _tiny_dear(tmp_path, (6, 12), 3)
  results = train.train_and_evaluate(config, str(tmp_path / 'w'), 'bfs',
                                     progress=False)
  stored = json.loads((tmp_path / 'w' / 'results.json').read_text())
  assert stored['extra_tests'] == json.loads(json.dumps(
      results['extra_tests']))
  assert stored['eval_warmup_waited'] is True
  assert stored['eval_cpu_seconds_per_graph'] > 0
  assert set(results['extra_tests']) == {'6', '12'}
  params = checkpoints.load_best_params(str(tmp_path / 'w'))
  spec = clrs_lib.processed_spec('bfs')
  dcfg = train.data_config(config)
  for n in (6, 12):
    got = results['extra_tests'][str(n)]
    evalset = splits.load_extra_test('bfs', n, dcfg, keep_hints=False)
    model = factory.build_model(config, spec, evalset.batches[0])
    want = train.evaluate(model, model.predict, params, evalset)
    assert got['score'] == pytest.approx(want['score'])
    assert got['graphs'] == 3 and got['nodes'] == n
    assert got['batch_size'] == splits.eval_batch_size(n, dcfg)
    assert got['solver_iterations'] == want['iterations']
    assert got['eval_seconds_per_graph'] > 0 and got['eval_warmup_waited']
    assert got['eval_cpu_seconds_per_graph'] > 0
    assert got['eval_load_average'] >= 0
    assert got['algo_steps_mean'] == pytest.approx(
        np.mean(evalset.lengths) - 1)



def test_graphs_within_the_time_limit_at_the_measured_pace():
  from dear_jax import extra_tests  # pylint: disable=g-import-not-at-top
  # 64 s a graph: 28 fit 1800 s, all 16 planned run
  assert extra_tests.graphs_within(1800, 64.0, 16) == 16
  # 640 s a graph: 2 fit
  assert extra_tests.graphs_within(1800, 640.0, 16) == 2
  # none fit: still 2
  assert extra_tests.graphs_within(1800, 3840.0, 16) == 2
  # 8 s a graph: 5 fit 40 s
  assert extra_tests.graphs_within(40, 8.0, 16) == 5
  # no limit: every graph
  assert extra_tests.graphs_within(None, 10.0, 16) == 16


class _Graphs:
  """An evaluation set of `num_samples` graphs, as score_within sees it."""

  def __init__(self, num_samples):
    self.num_samples = num_samples

  def head(self, graphs):
    assert graphs <= self.num_samples
    return _Graphs(graphs)


@pytest.mark.parametrize('pace, planned, want_sets, want', [
    # the probe's 2 graphs at 100 s: 18 fit 1800 s, all 16 scored again
    (100.0, 16, [2, 16], 16),
    # at 300 s: 6 fit, the first 6 scored (the probe's 2 among them)
    (300.0, 16, [2, 6], 6),
    # at 2000 s: only the probe's 2, which are the entry; not scored again
    (2000.0, 16, [2], 2),
    # a set of 2 is scored once, without a probe
    (2000.0, 2, [2], 2)])
def test_a_size_is_timed_on_its_own_first_graphs(monkeypatch, pace, planned,
                                                 want_sets, want):
  """The pace comes from the size's own first 2 graphs, whatever the
  official test's time: a stepwise model's time does not follow a power of
  n (the steps grow with n)."""
  from dear_jax import extra_tests  # pylint: disable=g-import-not-at-top
  scored = []

  def score(learner, params, evalset, before=None):
    del learner, params, before
    scored.append(evalset.num_samples)
    return dict(graphs=evalset.num_samples, eval_seconds_per_graph=pace,
                call=len(scored)), None

  monkeypatch.setattr(extra_tests, '_score', score)
  got = extra_tests.score_within(None, None, _Graphs(planned), 1800)
  assert scored == want_sets
  assert got['graphs'] == want and got['call'] == len(want_sets)
  if want < planned:
    assert got['graphs_planned'] == planned
    assert got['estimated_seconds_per_graph'] == pace
  else:
    assert 'graphs_planned' not in got
  scored.clear()  # no limit: every graph, once
  got = extra_tests.score_within(None, None, _Graphs(planned), None)
  assert scored == [planned] and 'graphs_planned' not in got


def test_a_size_over_the_time_limit_scores_its_first_graphs(tmp_path,
                                                            capsys):
  """With data.extra_test_max_seconds too small for one graph, a size is
  scored on its first 2 graphs: as evaluate scores a 2-graph split of that
  size (dm-clrs draws graphs one after another from the seed, so these are
  the same graphs), and as a later test of the run folder with the same
  limit scores them."""
  from dear_jax import pretrained  # pylint: disable=g-import-not-at-top
  config = _tiny_dear(tmp_path, (12,), 5)
  config.data.extra_test_max_seconds = 1e-9
  workdir = tmp_path / 'w'
  results = train.train_and_evaluate(config, str(workdir), 'bfs',
                                     progress=False)
  got = results['extra_tests']['12']
  assert (got['graphs'], got['graphs_planned']) == (2, 5)
  assert len(got['graph_scores']) == 2
  # the probe's own pace: it is the entry, timed on those 2 graphs
  assert got['estimated_seconds_per_graph'] == got['eval_seconds_per_graph']
  params = checkpoints.load_best_params(str(workdir))
  two = splits.load_extra_test(
      'bfs', 12, dataclasses.replace(train.data_config(config),
                                     extra_test_num_samples=2),
      keep_hints=False)
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'),
                              two.batches[0])
  want = train.evaluate(model, model.predict, params, two, per_graph=True)
  assert got['score'] == pytest.approx(want['score'])
  assert got['graph_scores'] == pytest.approx(want['graph_scores'])
  out = tmp_path / 'n12.json'
  assert pretrained.main([f'--model={workdir}', '--n=12', '--graphs=5',
                          '--max_seconds=1e-9', f'--json={out}']) == 0
  later = json.loads(out.read_text())
  assert (later['graphs'], later['graphs_planned']) == (2, 5)
  assert later['score'] == pytest.approx(got['score'])
  assert 'the first 2 of 5 graphs' in capsys.readouterr().out
  assert pretrained.main([f'--model={workdir}', '--n=12',
                          '--max_seconds=0']) == 2
  assert '--max_seconds must be a positive' in capsys.readouterr().err


def test_an_interrupted_test_phase_resumes_at_its_first_unfinished_size(
    tmp_path, monkeypatch):
  """A run stopped while testing its second size keeps its first: the
  resumed run scores only the second, writes the first as it was scored,
  and leaves no kept sizes behind; other parameters or settings score
  again."""
  from dear_jax import extra_tests  # pylint: disable=g-import-not-at-top
  config = _tiny_dear(tmp_path, (6, 7), 2)
  workdir = tmp_path / 'w'
  real, scored = extra_tests.score_within, []

  def stopping(learner, params, evalset, max_seconds):
    n = int(evalset.batches[0]['inputs']['pos'].shape[1])
    scored.append(n)
    if n == 7 and scored.count(7) == 1:
      raise KeyboardInterrupt('stopped while testing n=7')
    return real(learner, params, evalset, max_seconds)

  monkeypatch.setattr(extra_tests, 'score_within', stopping)
  with pytest.raises((KeyboardInterrupt, train.RunError)):
    train.train_and_evaluate(config, str(workdir), 'bfs', progress=False)
  kept = workdir / extra_tests.KEPT_DIR
  assert sorted(p.name for p in kept.iterdir()) == ['n6.json']
  first = json.loads((kept / 'n6.json').read_text())['entry']
  results = train.train_and_evaluate(config, str(workdir), 'bfs',
                                     progress=False)
  assert scored == [6, 7, 7]  # n=6 once, n=7 again after the stop
  assert results['extra_tests']['6'] == first
  assert results['extra_tests']['7']['graphs'] == 2
  assert not kept.exists()
  # the key: another parameter value, or other settings, is another key
  params = checkpoints.load_best_params(str(workdir))
  key = extra_tests.fingerprint(params, ('a',))
  assert extra_tests.fingerprint(params, ('b',)) != key
  flat, tree = jax.tree_util.tree_flatten(params)
  flat[0] = np.nextafter(np.asarray(flat[0]), np.inf)  # one ulp
  assert extra_tests.fingerprint(
      jax.tree_util.tree_unflatten(tree, flat), ('a',)) != key


class _Ready:
  """A prediction leaf that records when it is waited for."""

  def __init__(self, log, graphs):
    self.log, self.graphs = log, graphs

  def block_until_ready(self):
    self.log.append(('waited', self.graphs))
    return self


class _RecordingLearner:
  """The parts of a Learner that score_set calls, recording their order."""

  def __init__(self, can_compile=False):
    self.log, self.can_compile = [], can_compile

  def compile(self, params, batch):
    if self.can_compile:
      self.log.append(('compile', len(batch['lengths'])))
    return self.can_compile

  def warm(self, params, batch):
    self.log.append(('warm', len(batch['lengths'])))
    return {'out': _Ready(self.log, len(batch['lengths']))}

  def evaluate(self, params, evalset, per_graph=False, done=None):
    self.log.append(('evaluate', [len(b['lengths'])
                                  for b in evalset.batches[len(done or []):]]))
    return {'score': 0.5}


def test_a_timed_set_is_compiled_and_waited_for_before_its_pass(tmp_path):
  """score_set compiles each batch shape of a cut set (8, then its last 3
  graphs) and waits for each warm-up before the timed pass starts: JAX
  dispatches asynchronously, so a warm-up left running was timed with the
  pass. The pass computes only the 11 graphs it counts."""
  from dear_jax import extra_tests  # pylint: disable=g-import-not-at-top
  cfg = tiny_data_config(str(tmp_path), eval_batch_size=8)
  full = splits.load_split('bfs', 'test', cfg, length=6, num_samples=16,
                           keep_hints=False)
  learner = _RecordingLearner()
  entry = extra_tests.score_set(learner, None, full.head(11))
  assert learner.log == [('warm', 8), ('waited', 8), ('warm', 3),
                         ('waited', 3), ('evaluate', [8, 3])]
  assert (entry['graphs'], entry['batch_size']) == (11, 8)
  learner.log.clear()
  extra_tests.score_set(learner, None, full)  # uncut: one shape
  assert learner.log == [('warm', 8), ('waited', 8), ('evaluate', [8, 8])]


def test_a_compiled_warm_up_leaves_the_timed_call_nothing_to_trace_or_compile(
    tmp_path):
  """`Learner.compile` of the Flax learners (the training loop's and the
  stored models') compiles the test's prediction without running it; the
  call that follows must find that executable, or the timed pass would
  compile. Counted with jax.monitoring's trace and compile events."""
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  from dear_jax import pretrained  # pylint: disable=g-import-not-at-top
  config = _tiny_dear(tmp_path, (6,), 2)
  spec = clrs_lib.processed_spec('bfs')
  batch = splits.load_extra_test('bfs', 6, train.data_config(config),
                                 keep_hints=False).batches[0]
  net = factory.build_model(config, spec, batch)
  params = net.init(jax.random.PRNGKey(0), batch)
  flax_learner = train.FlaxLearner(config, spec)
  flax_learner.test_predict = jax.jit(net.for_test().predict)
  stored_learner = pretrained._Learner(net)  # pylint: disable=protected-access
  events = []

  def listen(name, seconds, **kwargs):
    del seconds, kwargs
    if name in ('/jax/core/compile/jaxpr_trace_duration',
                '/jax/core/compile/backend_compile_duration'):
      events.append(name)

  monitoring.register_event_duration_secs_listener(listen)
  try:
    for learner, predict in ((flax_learner, flax_learner.test_predict),
                             (stored_learner, stored_learner.predict)):
      events.clear()
      assert learner.compile(params, batch) is True
      assert events  # traced (compiled, unless an equal jit had compiled)
      events.clear()
      jax.block_until_ready(predict(params, batch))
      assert not events
  finally:
    monitoring.unregister_event_duration_listener(listen)


@pytest.mark.parametrize('batch_size,can_compile,want', [
    (2, True, 'compiled'), (1, True, 'compiled'), (8, True, 'executed'),
    (2, False, 'executed')])
def test_a_set_of_small_batches_is_compiled_for_without_being_run(
    tmp_path, batch_size, can_compile, want):
  """warm: where a batch holds at most MIN_GRAPHS graphs (one batch costs
  as much as the probe) and the learner can compile apart from a call, the
  shapes are compiled and nothing runs; otherwise each shape is predicted
  once. score_set records which."""
  from dear_jax import extra_tests  # pylint: disable=g-import-not-at-top
  cfg = tiny_data_config(str(tmp_path), eval_batch_size=batch_size)
  full = splits.load_split('bfs', 'test', cfg, length=6, num_samples=16,
                           keep_hints=False)
  learner = _RecordingLearner(can_compile)
  entry = extra_tests.score_set(learner, None, full.head(5))
  assert entry['eval_warmup'] == want
  shapes = sorted({len(b['lengths'])
                   for b in full.head(5).only_its_graphs().batches},
                  reverse=True)
  if want == 'compiled':
    assert learner.log[:-1] == [('compile', k) for k in shapes]
  else:
    assert learner.log[:-1] == [e for k in shapes
                                for e in (('warm', k), ('waited', k))]
  assert learner.log[-1][0] == 'evaluate'


@pytest.mark.parametrize('kind', ['dear', 'nar_lt'])
@pytest.mark.parametrize('batch_size,reused', [(2, True), (1, True),
                                               (4, False)])
def test_a_probe_of_whole_batches_is_not_predicted_again(
    tmp_path, monkeypatch, kind, batch_size, reused):
  """score_within over 5 graphs with a limit they fit: where the probe's 2
  graphs are the set's first whole batches (batches of 1 or 2) they are
  predicted once, and the entry is the one set's that scores all 5 at once
  (score, per-graph scores, DEAR's iterations, the NAR's steps), timed as
  the probe's pass plus the rest's; where the probe cut a batch (batches
  of 4) the set is scored whole again, and timed alone."""
  from dear_jax import extra_tests, pretrained  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path / 'data', kind='nar' if kind == 'nar_lt'
                       else kind)
  if kind == 'nar_lt':
    config.nar.hint_mode = 'none'
    config.nar.learn_termination = True
  config.model.hidden = 8
  config.data.eval_batch_size = batch_size
  config.data.extra_test_num_samples = 5
  evalset = splits.load_extra_test('bfs', 5, train.data_config(config),
                                   keep_hints=False)
  assert len(evalset.batches[0]['lengths']) == batch_size
  net = factory.build_model(config, clrs_lib.processed_spec('bfs'),
                            evalset.batches[0]).for_test()
  params = net.init(jax.random.PRNGKey(3), evalset.batches[0])

  class Counting(pretrained._Learner):  # pylint: disable=protected-access
    predicted = 0

    def evaluate(self, params, evalset, per_graph=False, done=None):
      Counting.predicted += len(evalset.batches) - len(done or [])
      return super().evaluate(params, evalset, per_graph, done)

  class Second(extra_tests.profiling.Stopwatch):  # each pass 1 s, 0.5 of CPU
    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.wall, self.cpu, self.load = 1.0, 0.5, 0.0

  monkeypatch.setattr(extra_tests.profiling, 'Stopwatch', Second)
  got = extra_tests.score_within(Counting(net), params, evalset, 1e6)
  passes = 2 if reused else 1
  assert got['eval_seconds_per_graph'] == pytest.approx(passes / 5)
  assert got['eval_cpu_seconds_per_graph'] == pytest.approx(passes * 0.5 / 5)
  batches = -(-5 // batch_size)
  probe = -(-2 // batch_size)
  assert Counting.predicted == (batches if reused else probe + batches)
  assert got.get('graphs_from_probe') == (2 if reused else None)
  want = extra_tests.score_set(pretrained._Learner(net), params, evalset)  # pylint: disable=protected-access
  assert got['graphs'] == want['graphs'] == 5
  for key in ('score', 'graph_scores', 'solver_iterations', 'nar_steps'):
    assert got.get(key) == want.get(key), key
  assert ('solver_iterations' if kind == 'dear' else 'nar_steps') in got


def test_a_time_from_before_the_waited_warm_up_counts_its_batch_once():
  """rows.eval_seconds: a Flax model's test without 'eval_warmup_waited'
  ran its first batch twice in the timed pass, so its time per graph is
  taken as measured x B / (B + 1); tests that waited, and dm-clrs's model
  (it always waited), are as measured."""
  from baselines import rows as rows_lib  # pylint: disable=g-import-not-at-top
  old = {'eval_seconds_per_graph': 0.3}
  assert rows_lib.eval_seconds(old, 32, 32, 'dear') == pytest.approx(0.15)
  assert rows_lib.eval_seconds(old, 16, 8, 'nar') == pytest.approx(0.2)
  assert rows_lib.eval_seconds(old, 16, 2, 'dear') == pytest.approx(0.3 * 8 / 9)
  assert rows_lib.eval_seconds(old, 2048, 32, 'nar') == pytest.approx(
      0.3 * 64 / 65)
  assert rows_lib.eval_seconds(old, 32, 32, 'clrs_official') == 0.3
  assert rows_lib.eval_seconds(dict(old, eval_warmup_waited=True), 32, 32,
                             'dear') == 0.3


def test_a_stopwatch_counts_this_process_cpu_apart_from_its_wall_time():
  """profiling.Stopwatch: waiting (another job's turn, here a sleep) adds
  wall seconds and no CPU seconds; work adds CPU seconds."""
  import time  # pylint: disable=g-import-not-at-top
  from dear_jax import profiling  # pylint: disable=g-import-not-at-top
  with profiling.Stopwatch() as waited:
    time.sleep(0.3)
  assert waited.wall >= 0.3 and waited.cpu < 0.1
  with profiling.Stopwatch() as worked:
    start = time.process_time()
    while time.process_time() - start < 0.2:
      pass
  assert worked.cpu >= 0.2
  keys = worked.per_graph(4)
  assert keys['eval_cpu_seconds_per_graph'] == worked.cpu / 4
  assert keys['eval_seconds_per_graph'] == worked.wall / 4
  assert keys['eval_load_average'] == worked.load


def test_a_cut_batch_keeps_its_graphs_sender_lists(tmp_path):
  """only_its_graphs cuts every per-graph array of the last batch, the
  gated max-MPNN's sender lists too, to the graphs the split counts."""
  cfg = tiny_data_config(str(tmp_path), extra_test_num_samples=5,
                         eval_batch_size=4, test_length=12)
  split = splits.load_extra_test('bfs', 12, cfg, keep_hints=False)
  assert 'senders' in split.batches[0]
  cut = split.head(3).only_its_graphs()
  assert [len(b['lengths']) for b in cut.batches] == [3]
  whole = split.batches[0]
  for k, v in cut.batches[0]['inputs'].items():
    np.testing.assert_array_equal(v, whole['inputs'][k][:3])
  for k, v in cut.batches[0]['outputs'].items():
    np.testing.assert_array_equal(v, whole['outputs'][k][:3])
  np.testing.assert_array_equal(cut.batches[0]['senders'],
                                whole['senders'][:3])
  np.testing.assert_array_equal(cut.batches[0]['lengths'],
                                whole['lengths'][:3])
  assert cut.only_its_graphs() is cut
  # 5 graphs in batches of 4: the last batch, padded by repetition, is cut
  assert [len(b['lengths']) for b in split.batches] == [4, 4]
  assert [len(b['lengths'])
          for b in split.only_its_graphs().batches] == [4, 1]


def test_a_later_test_of_a_run_folder_scores_as_the_run_did(tmp_path):
  """`python -m dear_jax.pretrained --model=RUN --n=N --json=RUN/tests/..`
  against the run's own test at that size; the reports take a later size
  and leave a size the run tested itself to results.json."""
  from baselines import rows as rows_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import pretrained  # pylint: disable=g-import-not-at-top
  config = _tiny_dear(tmp_path, (6,), 3)
  workdir = tmp_path / 'w'
  results = train.train_and_evaluate(config, str(workdir), 'bfs',
                                     progress=False)
  tests = workdir / rows_lib.LATER_TESTS
  for n in (6, 12):
    assert pretrained.main([f'--model={workdir}', f'--n={n}', '--graphs=3',
                            f'--json={tests}/n{n}.json']) == 0
  own, later = results['extra_tests']['6'], json.loads(
      (tests / 'n6.json').read_text())
  for key in ('score', 'graphs', 'nodes', 'batch_size', 'solver_iterations',
              'graph_scores', 'algo_steps_mean'):
    assert later[key] == own[key], key
  run = dict(algorithm='bfs', model='dear', seed=0, run_dir=str(workdir),
             results=json.loads((workdir / 'results.json').read_text()))
  rows = rows_lib.size_rows([run])
  assert [r['nodes'] for r in rows] == [5, 6, 12]
  at12 = json.loads((tests / 'n12.json').read_text())
  assert rows[2]['test_score'] == at12['score'] and at12['graphs'] == 3
  assert rows[1]['test_score'] == own['score']


def _run(model, seed, score, extra=None, **keys):
  results = dict(test_score=score, test_nodes=64, test_graphs=32,
                 eval_seconds_per_graph=0.002, algo_steps_mean=3.0,
                 hardware='h', **keys)
  if extra is not None:
    results['extra_tests'] = extra
  return dict(algorithm='bfs', model=model, seed=seed, results=results)


def test_reports_by_size(tmp_path):
  """results_by_size.csv rows, results.md's table and the plot, from the
  runs' extra_tests (runs without them add nothing)."""
  import csv  # pylint: disable=g-import-not-at-top
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  from baselines import plots, report  # pylint: disable=g-import-not-at-top
  from baselines import rows as rows_lib  # pylint: disable=g-import-not-at-top
  extra = lambda score, it: {'128': dict(
      nodes=128, graphs=100, batch_size=8, score=score,
      eval_seconds_per_graph=0.008, eval_warmup_waited=True,
      algo_steps_mean=4.0, **it)}
  runs = [_run('dear', 0, 0.9, extra(0.6, dict(solver_iters_mean=12.0)),
               solver_iters_mean=10.0),
          _run('dear', 1, 0.8, extra(0.4, dict(solver_iters_mean=14.0)),
               solver_iters_mean=20.0),
          _run('nar_lt', 0, 0.7, extra(0.5, dict(nar_steps_mean=2.0)),
               nar_steps_mean=3.0),
          _run('nar', 0, 0.95)]
  rows = rows_lib.size_rows(runs)
  assert [(r['model'], r['seed'], r['nodes']) for r in rows] == [
      ('dear', 0, 64), ('dear', 0, 128), ('dear', 1, 64), ('dear', 1, 128),
      ('nar_lt', 0, 64), ('nar_lt', 0, 128)]
  assert rows[1]['test_score'] == 0.6 and rows[1]['graphs'] == 100
  assert rows[5]['nar_steps_mean'] == 2.0 and rows[4]['nar_steps_mean'] == 3.0
  path = tmp_path / 'by_size.csv'
  rows_lib.write_csv(str(path), rows, rows_lib.SIZE_COLUMNS)
  with open(path) as f:
    back = list(csv.DictReader(f))
  assert len(back) == 6 and float(back[3]['solver_iters_mean']) == 14.0
  lines = report._size_lines(rows, ['dear', 'nar_lt'])  # pylint: disable=protected-access
  assert ('| bfs | `dear` | 85.0 / 2.0 / 15.0 (3.0), n=2 | '
          '50.0 / 8.0 / 13.0 (4.0), n=2 |') in lines
  assert '| bfs | `nar_lt` | 70.0 / 2.0 / 3.0 (3.0) | 50.0 / 8.0 / 2.0 (4.0) |' \
      in lines
  assert report._size_lines(rows_lib.size_rows(runs[3:]), ['nar']) == []  # pylint: disable=protected-access
  png = plots.by_size(str(tmp_path / 'by_size.png'), rows)
  assert matplotlib.image.imread(png).shape[0] > 100


# --- the gated max-MPNN along sender lists -----------------------------------

@pytest.mark.parametrize('algorithm', ['bfs', 'bellman_ford', 'mst_prim'])
def test_sender_lists_are_the_encoders_adjacency(algorithm, tmp_path):
  """aggregation_senders (numpy) lists exactly the pairs the model's dense
  aggregation reads: the encoders' adjacency plus self-loops."""
  import jax  # pylint: disable=g-import-not-at-top
  from dear_jax import batches as batch_lib  # pylint: disable=g-import-not-at-top
  from dear_jax.nar import StepwiseNAR  # pylint: disable=g-import-not-at-top
  from tests.conftest import model_config  # pylint: disable=g-import-not-at-top
  cfg = tiny_data_config(str(tmp_path), extra_test_num_samples=3)
  batch = splits.load_split(algorithm, 'test', cfg, length=12,
                            num_samples=3).batches[0]
  spec = clrs_lib.processed_spec(algorithm)
  senders = batch_lib.aggregation_senders(batch, spec)
  model = StepwiseNAR(spec, batch, model_config(hidden=4, processor='gmpnn'),
                      'none')
  params = model.init(jax.random.PRNGKey(0), batch)
  _, _, _, adj = model.encode(params, batch['inputs'], 12)
  dense = np.maximum(np.asarray(model.adjacency(batch, adj)), np.eye(12))
  for b in range(senders.shape[0]):
    for j in range(12):
      assert set(senders[b, j]) == set(np.flatnonzero(dense[b, :, j]))
  assert senders.shape[-1] in (6, 8, 12)  # the bucket of the largest degree
  assert batch_lib.aggregation_senders(
      splits.load_split('insertion_sort', 'test', cfg).batches[0],
      clrs_lib.processed_spec('insertion_sort')) is None


def test_gated_max_mpnn_along_sender_lists_equals_dense_float64():
  """Sparse ER graphs, random features and parameters, float64: the sender-
  list path is the dense path's function (value and gradient); with edge
  terms precomputed (the NAR's EdgeMaps) as well."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dear_jax import batches as batch_lib  # pylint: disable=g-import-not-at-top
  from dear_jax.processors import GatedMaxMPNN  # pylint: disable=g-import-not-at-top
  spec = {'adj': ('input', 'edge', 'mask')}
  with jax.enable_x64(True):
    rng = np.random.RandomState(0)
    b, n, h = 3, 14, 6
    adj = (rng.rand(b, n, n) < 0.2).astype(np.float64)
    senders = batch_lib.aggregation_senders(
        dict(inputs={'adj': adj}, hints={}, outputs={}, lengths=None), spec)
    assert senders.shape[-1] < n
    # aggregation_senders symmetrises the mask, as the encoders do.
    sym = np.maximum(adj, np.swapaxes(adj, 1, 2))
    key = jax.random.PRNGKey(1)
    node, edge, graph, hidden = (jax.random.normal(jax.random.fold_in(key, i),
                                                   s, jnp.float64)
                                 for i, s in enumerate([(b, n, h),
                                                        (b, n, n, h), (b, h),
                                                        (b, n, h)]))
    proc = GatedMaxMPNN(hidden=h)
    params = proc.init(key, node, edge, graph, sym, hidden)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    run = lambda p, a, **kw: proc.apply(p, node, edge, graph, a, hidden,
                                        **kw)[0]
    want = run(params, jnp.asarray(sym))
    got = run(params, jnp.asarray(senders))
    assert got.dtype == want.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    loss = lambda p, a: jnp.sum(jnp.sin(run(p, a)))
    gw = jax.grad(loss)(params, jnp.asarray(sym))
    gg = jax.grad(loss)(params, jnp.asarray(senders))
    for x, y in zip(jax.tree.leaves(gg), jax.tree.leaves(gw)):
      np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    m_edge = params['params']['m_edge']
    terms = {'m_edge': edge @ m_edge['kernel'] + m_edge['bias']}
    np.testing.assert_allclose(
        run(params, jnp.asarray(senders), edge_terms=terms), want,
        rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kind', ['dear', 'nar'])
def test_models_on_sender_lists_predict_as_on_the_dense_graph(kind, tmp_path):
  """DEAR (solver and all) and the stepwise NAR with model.processor=gmpnn:
  the extra test's batches with sender lists give the dense batches'
  outputs (float32, to rounding)."""
  import jax  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, kind=kind)
  config.model.processor = 'gmpnn'
  config.data.extra_test_num_samples = 2
  spec = clrs_lib.processed_spec('bfs')
  evalset = splits.load_extra_test('bfs', 24, train.data_config(config),
                                   keep_hints=True)
  batch = evalset.batches[0]
  assert batch['senders'].shape[-1] < 24
  # one width for the split (the timed pass compiles once)
  more = dataclasses.replace(train.data_config(config),
                             extra_test_num_samples=9)
  widths = {b['senders'].shape for b in
            splits.load_extra_test('bfs', 24, more).batches}
  assert len(widths) == 1
  dense = {k: v for k, v in batch.items() if k != 'senders'}
  model = factory.build_model(config, spec, dense)
  params = model.init(jax.random.PRNGKey(0), dense)
  fwd = lambda b: model.forward(params, b, training=False,
                                key=jax.random.PRNGKey(0))
  want, _, aux_want = fwd(dense)
  got, _, aux_got = fwd(batch)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)
  if kind == 'dear':
    # the same solve (one iteration apart at most, where rounding crosses
    # the tolerance)
    assert np.abs(np.asarray(aux_got['solver'].iterations) -
                  np.asarray(aux_want['solver'].iterations)).max() <= 1


def test_eval_sizes_benchmark_scores_lists_and_dense_alike(tmp_path):
  """benchmarks/eval_sizes.py: dear_paper along sender lists and over all
  pairs is one model (same score and iterations); the rows name which."""
  from benchmarks import eval_sizes  # pylint: disable=g-import-not-at-top
  rows = [eval_sizes.measure(m, 'bfs', 24, hidden=8, graphs=2,
                             cache_dir=str(tmp_path))
          for m in ('dear_paper', 'dear_paper_dense')]
  assert rows[0]['senders_per_node'] < 24
  assert rows[1]['senders_per_node'] is None
  assert rows[0]['score'] == rows[1]['score']
  assert abs(rows[0]['solver_iters_mean'] - rows[1]['solver_iters_mean']) <= 1
  assert rows[0]['peak_rss_mb'] > 0 and rows[0]['graphs'] == 2
