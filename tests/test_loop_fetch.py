"""The training loop without a wait per update (dear_jax/loop.py): losses
fetched in batches, batches drawn ahead in a thread (input_pipeline.Prefetch),
and the run's `timings`."""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dear_jax import clrs_lib, compile_cache, input_pipeline, loop, splits
from dear_jax import factory
from dear_jax import progress
from dear_jax import train

# As tests/test_train.py's runs: the reference below compiles the same way.
pytestmark = pytest.mark.usefixtures('fast_compile')


def _config(cache_dir, steps=6, eval_every=6):
  config = tiny_config(cache_dir, 'nar', steps=steps)
  config.nar.hint_mode = 'none'  # a smaller step
  config.train.eval_every = eval_every
  return config


def _train(config, workdir, fetch_every, monkeypatch):
  monkeypatch.setattr(loop, 'FETCH_EVERY', fetch_every)
  return train.train_and_evaluate(config, str(workdir), 'bfs', False)


# --- host syncs ---------------------------------------------------------------
# jax's transfer guard does not see reads on the CPU, and a computation with a
# host callback runs synchronously there: the reads are counted instead.


class _Watched:
  """A learner's losses that log every read of their values."""

  def __init__(self, losses, log):
    self._losses, self._log = losses, log

  def __array__(self, dtype=None, copy=None):
    self._log.append('read')
    return np.asarray(self._losses, dtype=dtype)

  def __getattr__(self, name):  # any other use of the array: a read too
    self._log.append('read')
    return getattr(self._losses, name)


@pytest.fixture
def events(monkeypatch):
  """('step', updates done, whether the call compiled) after every
  learner.step call; 'read' for each read of the losses it returned (they
  are handed to the loop watched) and 'sync' for each jax array read
  through ArrayImpl._value (float, .item(), .tolist(), device_get), in
  order."""
  log = []
  impl = type(jnp.zeros(()))
  value = impl._value  # pylint: disable=protected-access

  def counting(self):
    log.append('sync')
    return value.fget(self)

  monkeypatch.setattr(impl, '_value', property(counting))
  real_step = train.FlaxLearner.step

  def step(self, members, batches, steps):
    losses, aux, compiled = real_step(self, members, batches, steps)
    log.append(('step', steps[0] + 1, compiled))
    return _Watched(losses, log), aux, compiled

  monkeypatch.setattr(train.FlaxLearner, 'step', step)
  return log


def _reads_after_steps(log) -> dict:
  """Updates done -> (compiled, reads and syncs before the next learner
  call), for every update but the last."""
  at = [i for i, e in enumerate(log) if isinstance(e, tuple)]
  return {log[a][1]: (log[a][2], len(log[a + 1:b]))
          for a, b in zip(at, at[1:])}


def test_no_host_sync_between_fetches(cache_dir, tmp_path, monkeypatch,
                                      events):
  """10 updates, validation after the last, losses fetched every 5: the
  loop reads the device after update 5 and after a call that compiled (a
  new hint length), never after the others."""
  r = _train(_config(cache_dir, steps=10, eval_every=10), tmp_path / 'w', 5,
             monkeypatch)
  after = _reads_after_steps(events)
  assert sorted(after) == list(range(1, 10))
  quiet = {k: n for k, (compiled, n) in after.items()
           if not compiled and k != 5}
  assert len(quiet) >= 3 and set(quiet.values()) == {0}, after
  fetched = [n for k, (compiled, n) in after.items() if compiled or k == 5]
  assert min(fetched) >= 1  # the count sees the loop's reads
  assert [s for s, _ in r['loss_curve']] == list(range(1, 11))


# --- same numbers as a wait per update ----------------------------------------

def test_losses_and_checkpoints_match_stepping_by_hand(cache_dir, tmp_path,
                                                      monkeypatch):
  """The loop (fetching every 4 updates, batches drawn ahead) against the
  train step applied by hand to the stream's batches, and against the loop
  fetching after every update: the same losses, validations, test score."""
  config = _config(cache_dir, steps=6, eval_every=3)
  got = _train(config, tmp_path / 'a', 4, monkeypatch)
  every = _train(config, tmp_path / 'b', 1, monkeypatch)
  for key in ('loss_curve', 'val_curve', 'test_score', 'best_step'):
    assert got[key] == every[key], key

  dcfg = train.data_config(config)
  seed = config.train.seed
  hints = factory.uses_hints(config)
  val_set = splits.load_split('bfs', 'val', dcfg, seed, keep_hints=hints)
  _, step_fn, params, opt_state = train.setup(
      config, clrs_lib.processed_spec('bfs'), val_set.batches[0],
      jax.random.fold_in(jax.random.PRNGKey(seed), 0))
  stream = input_pipeline.TrainStream('bfs', dcfg, seed, keep_hints=hints)
  want = []
  for k in range(1, 7):
    step = jnp.asarray(k, jnp.int32)
    params, opt_state, loss, _ = step_fn(
        params, opt_state, next(stream),
        jax.random.fold_in(jax.random.PRNGKey(seed), step), step)
    want.append([k, float(loss)])
  assert got['loss_curve'] == want


def test_divergence_found_at_fetch_names_the_first_bad_update(
    cache_dir, tmp_path, monkeypatch, capsys):
  """Fetching every 100 updates finds the same first non-finite loss as a
  check after every update, and keeps only the finite losses before it."""
  config = _config(cache_dir, steps=8, eval_every=8)
  config.train.learning_rate = 1e30
  config.train.grad_clip = 1e30
  errors = {}
  for every in (1, 100):
    with pytest.raises(loop.RunError) as e:
      _train(config, tmp_path / f'w{every}', every, monkeypatch)
    errors[every] = str(e.value)
  assert 'diverged' in errors[1]
  assert errors[1] == errors[100]


# --- Prefetch ---------------------------------------------------------------

def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                  jax.tree.leaves(b)))


def test_prefetch_same_batches_and_state_of_the_last_taken(data_cfg):
  """The feed's batches are the stream's; its state after k taken batches is
  a plain stream's after k, though the thread has drawn ahead; a stream set
  to that state continues with batch k + 1."""
  plain = input_pipeline.TrainStream('bfs', data_cfg, seed=3)
  want = [next(plain) for _ in range(6)]
  stream = input_pipeline.TrainStream('bfs', data_cfg, seed=3)
  feed = input_pipeline.Prefetch(stream, 6, depth=2)
  got = [next(feed), next(feed)]
  deadline = time.monotonic() + 60
  # pylint: disable=protected-access
  while stream._step < 4 and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  assert stream._step == 4  # drawn ahead, at most depth
  state = feed.get_state()
  got += [next(feed) for _ in range(4)]
  assert all(_same(g, w) for g, w in zip(got, want))
  with pytest.raises(StopIteration):  # count reached: nothing more drawn
    next(feed)
  feed.close()
  resumed = input_pipeline.TrainStream('bfs', data_cfg, seed=3)
  resumed.set_state(state)
  assert _same(next(resumed), want[2])


def test_prefetch_draws_nothing_before_first_next_and_raises_stream_errors():
  class Stream:
    drawn = 0

    def __next__(self):
      self.drawn += 1
      if self.drawn == 2:
        raise OSError('disk full')
      return {'x': np.ones(1)}

    def get_state(self):
      return {'step': self.drawn}

  s = Stream()
  feed = input_pipeline.Prefetch(s, 5)
  assert feed.get_state() == {'step': 0} and s.drawn == 0
  next(feed)
  with pytest.raises(OSError, match='disk full'):
    next(feed)
  assert feed.get_state() == {'step': 1}
  feed.close()


# --- timings ------------------------------------------------------------------

def test_compile_clock_is_the_union_of_jaxs_compile_spans():
  """Against the raw spans jax reports, collected here: a new program adds
  its spans, a cached call nothing."""
  spans = []

  def listen(event, start, end, **_):
    if event in compile_cache._COMPILE_EVENTS:  # pylint: disable=protected-access
      spans.append(end - start)

  jax.monitoring.register_event_time_span_listener(listen)
  clock = compile_cache.CompileClock()
  try:
    f = jax.jit(lambda x: jnp.sin(x) * 2 + 0.25)
    f(jnp.arange(7.0)).block_until_ready()
    after_first = clock.seconds
    f(jnp.arange(7.0)).block_until_ready()  # cached: nothing new
  finally:
    clock.close()
    jax.monitoring.unregister_event_time_span_listener(listen)
  assert len(spans) >= 2 and after_first > 0  # trace, lower, compile
  assert clock.seconds == after_first == pytest.approx(sum(spans), rel=1e-9)


def test_compile_clock_counts_overlapping_spans_once():
  """Spans arrive as they end: a trace inside another's, two compiles that
  overlap; other events are not compiling."""
  event = sorted(compile_cache._COMPILE_EVENTS)[0]  # pylint: disable=protected-access
  clock = compile_cache.CompileClock()
  try:
    for start, end in [(0, 1), (2.2, 2.4), (2.5, 2.7), (2, 3), (2.9, 3.5),
                       (5, 6)]:
      jax.monitoring.record_event_time_span(event, start, end)
    jax.monitoring.record_event_time_span('/not/compiling', 7, 100)
  finally:
    clock.close()
  assert clock.seconds == pytest.approx(1 + 1.5 + 1)


def test_results_timings(finished_run):
  """Every model's results.json splits its time (clrs_official: its test)."""
  for kind in ('nar', 'dear'):
    r = finished_run(kind).results
    t = r['timings']
    assert set(t) == set(loop.TIMINGS)
    assert all(v >= 0 for v in t.values())
    assert t['compile_seconds'] > 0 and t['test_seconds'] > 0
    # the loop's time, compiling taken out
    assert t['train_seconds'] <= r['train_seconds']


def test_phase_splits_wall_time_into_compiling_and_the_rest(monkeypatch):
  """_Phase against a scripted clock and a scripted compile counter."""

  class Clock:
    seconds = 0.0

  class Run:
    meta = {'timings': loop._no_timings()}  # pylint: disable=protected-access

  clock, run = Clock(), Run()
  now = [100.0]
  monkeypatch.setattr(loop.time, 'perf_counter', lambda: now[0])
  with loop._Phase(clock, [run], 'checks_seconds') as p:  # pylint: disable=protected-access
    now[0] += 5.0
    clock.seconds += 2.0
  assert p.wall == 5.0
  assert run.meta['timings']['checks_seconds'] == 3.0
  assert run.meta['timings']['compile_seconds'] == 2.0


def test_prefetch_thread_ends_with_the_run(cache_dir, tmp_path, monkeypatch):
  before = threading.active_count()
  _train(_config(cache_dir, steps=2, eval_every=2), tmp_path / 'w', 25,
         monkeypatch)
  assert threading.active_count() == before


def test_progress_bar_shows_fetched_loss_and_best_validation(
    cache_dir, tmp_path, monkeypatch):
  """With a bar: its postfix after the last fetch holds the last update's
  loss and the best validation score, as results.json has them; the bar is
  told which steps compiled (left out of its ETA), as results.json counts
  them."""
  seen, steps = [], []

  class Bar(progress.ProgressBar):

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
      seen.append(dict(ordered_dict or {}, **kwargs))
      return super().set_postfix(ordered_dict, refresh, **kwargs)

    def step(self, compiled):
      steps.append(compiled)
      return super().step(compiled)

  monkeypatch.setattr(loop.progress_lib, 'ProgressBar', Bar)
  monkeypatch.setattr(loop, 'FETCH_EVERY', 3)
  r = train.train_and_evaluate(_config(cache_dir, steps=4, eval_every=4),
                               str(tmp_path / 'w'), 'bfs', progress=True)
  assert seen[-1]['loss'] == f"{r['loss_curve'][-1][1]:.3f}"
  assert seen[-1]['best'] == f"{r['val_score']:.3f}"
  assert len(steps) == 4 and steps[0]
  assert sum(steps) == r['compile_steps']
