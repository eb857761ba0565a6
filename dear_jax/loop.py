"""The one training loop of every model: `train(learner, runs, ...)`.

The Flax models (`dear_jax.train.FlaxLearner`, seeds stacked with vmap) and
dm-clrs's BaselineModel (`baselines.clrs_official.OfficialLearner`, a stack
of one) differ only in their `Learner`; this loop owns everything the
comparison depends on, so that it is the same for all of them:

* validation: before training (step 0), after every `eval_every` updates and
  after the last; steps count the updates done. A new best needs a strictly
  higher score; the test split is scored with the best parameters.
* `loss_curve`: [updates done, loss of that update] for every update.
* no wait per update: the learner returns its losses as device arrays; the
  loop fetches them in one transfer every `fetch_every` updates, at every
  validation and after a call that compiled, so the host runs ahead of the
  device and a background thread draws the next batches
  (`input_pipeline.Prefetch`). A non-finite loss is found at the next fetch;
  the error names the update that produced it.
* timing: `train_seconds` is the loop's wall time without validations and
  checkpoints; the steady-state rates count the stretches between two
  fetches in which no learner call compiled (the learner reports whether
  its jitted step traced). `timings` splits the run's time into compiling
  (any phase; `compile_cache.CompileClock`) and the rest of training,
  validation with checkpoints, the test pass and `Learner.results` (the
  fixed-point checks).
* the progress bar: the run's model name, loss, last and best validation,
  updated at fetches only; "compiling…" and no ETA until a step has run that
  did not compile, the ETA from those steps (`progress.ProgressBar`).
* results.json: the common keys here, the model's own from `Learner.results`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time

import jax
import numpy as np

from dear_jax import batches as batch_lib
from dear_jax import compile_cache
from dear_jax import extra_tests
from dear_jax import input_pipeline
from dear_jax import profiling
from dear_jax import progress as progress_lib
from dear_jax import seeds as seeds_lib
from dear_jax import splits
from dear_jax.checkpoints import Checkpoints, RunError
from dear_jax.results import write_results


class Learner:
  """What the loop needs from a model family (one or several seeds).

  `name` labels the progress bar (the model as compare calls it) and
  `model` is results.json's 'model'."""

  name = model = ''

  def start(self, runs: list, progress: bool) -> None:
    """Builds the model and each run's state; a resumable learner restores
    `run` from its checkpoints here (setting run.step, run.best_params)."""
    raise NotImplementedError

  def step(self, members: list, batches: list, steps: list):
    """Updates runs `members` (steps: their updates done so far) on their
    batches -> (losses, one per member, as an array the loop fetches later:
    the call must not wait for the device; aux dict; whether this call
    compiled)."""
    raise NotImplementedError

  def state(self, j: int):
    """Run j's (params, optimiser state or None); params must stay valid
    after later steps (they become the best parameters)."""
    raise NotImplementedError

  def checkpoint_meta(self, j: int) -> dict:
    """JSON state of run j that is not in its pytrees (e.g. a key chain),
    taken after each validation and saved with its checkpoint as
    run.meta['learner']; `start` reads it back after `run.restore`."""
    return {}

  def evaluate(self, params, evalset, per_graph: bool = False,
               done: list | None = None) -> dict:
    """`dear_jax.train.evaluate`'s dict (score, scores, solver statistics;
    with `per_graph`, each graph's own score too: tests, not validation);
    `done` as that function takes it."""
    raise NotImplementedError

  def warm(self, params, batch):
    """Predicts one batch as the test does, compiling it; returns the
    prediction, which `extra_tests.warm` waits for."""
    raise NotImplementedError

  def compile(self, params, batch) -> bool:
    """Compiles the test's prediction for `batch`'s shape without running
    it, so that the next call finds the executable; False where the learner
    cannot (a model with its own jit inside), and `warm` must run it."""
    del params, batch
    return False

  def metrics(self, evaluation: dict) -> dict:
    """The model's own keys of a validation's evaluation that metrics.jsonl
    logs beside its score (DEAR: the solver's iterations, convergence)."""
    return {}

  def progress(self, aux) -> dict:
    """The model's own progress-bar entries from a step's aux."""
    return {}

  def results(self, results: dict, run, best_params, test: dict,
              test_set) -> None:
    """Adds the model's own keys (config, hint_mode, ...) to `results`."""
    raise NotImplementedError


class Run:
  """One seed of a run: its data, optional checkpoints and bookkeeping."""

  def __init__(self, workdir: str, seed: int, algorithm: str, dcfg,
               hints: bool, test_key: str, checkpoints: bool = True,
               config=None):
    self.workdir, self.seed, self.config = workdir, int(seed), config
    self.dcfg = dcfg
    os.makedirs(workdir, exist_ok=True)
    self.stream = input_pipeline.train_stream(algorithm, dcfg, self.seed,
                                              keep_hints=hints,
                                              recorded=dcfg.recorded_stream)
    self.val_set = splits.load_split(algorithm, 'val', dcfg, self.seed,
                                     keep_hints=hints)
    self.data_key = self.val_set.key + test_key
    self.checkpoints = (Checkpoints(os.path.join(workdir, 'checkpoints'))
                        if checkpoints else None)
    self.meta = dict(step=0, best_val=-1.0, best_step=0, best_scores=None,
                     val_curve=[], loss_curve=[], train_seconds=0.0,
                     data_key=self.data_key,
                     steady=dict(steps=0, update_seconds=0.0,
                                 loop_seconds=0.0),
                     compile_steps=0, timings=_no_timings())
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.best_params, self.step = None, 0
    self.clock, self.error = 0.0, None  # training time at the last save
    self.feed = None  # the loop's input_pipeline.Prefetch of `stream`

  def restore(self, state: dict, progress: bool) -> dict:
    """`state` (params, opt_state, best_params, data) from the latest
    checkpoint, or `state` itself when there is none."""
    start = self.checkpoints.latest_step()
    if start is not None:
      state, self.meta = self.checkpoints.restore(start, state)
      # The validation data chose the best parameters; the test data may
      # change (dear_jax.train.EVALUATION_KEYS).
      if not self.meta['data_key'].startswith(self.val_set.key):
        raise RunError(f'{self.workdir} holds a run with another data '
                       'protocol; use another --workdir')
      self.stream.set_state(state['data'])
      if progress:
        print(f'resuming from step {self.meta["step"]} ({self.workdir})')
    self.best_params, self.step = state['best_params'], self.meta['step']
    return state

  def validate(self, step: int, params, learner: Learner) -> None:
    v = learner.evaluate(params, self.val_set)
    self.meta['val_curve'].append([step, v['score']])
    if v['score'] > self.meta['best_val']:
      self.meta.update(best_val=v['score'], best_step=step,
                       best_scores=v.get('scores'))
      self.best_params = params
    record = dict(step=step, val_score=v['score'], **learner.metrics(v))
    with open(self.metrics_path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def save(self, params, opt_state) -> None:
    self.meta['step'] = self.step
    if self.checkpoints is not None:
      self.checkpoints.save(self.step, dict(
          params=params, opt_state=opt_state, best_params=self.best_params,
          data=(self.feed or self.stream).get_state()), self.meta)

  def close(self) -> None:
    if self.feed is not None:
      self.feed.close()
    if self.checkpoints is not None:
      self.checkpoints.close()


TIMINGS = ('compile_seconds', 'train_seconds', 'validate_seconds',
           'test_seconds', 'checks_seconds', 'extra_tests_seconds')
FETCH_EVERY = 25  # updates between two fetches of the losses, at most
PREFETCH = 2  # training batches drawn ahead per run (0: drawn when needed)


def _no_timings() -> dict:
  return {k: 0.0 for k in TIMINGS}


def _rate(steps: int, seconds: float) -> float:
  return steps / seconds if seconds > 0 else float('nan')


def stop_on_sigterm() -> None:
  """SIGTERM (`kill PID`, a scheduler's stop) interrupts a run as Ctrl-C
  does: the run reports its step and intact checkpoint instead of vanishing.
  (A job started in the background by a non-interactive shell ignores
  Ctrl-C's SIGINT; SIGTERM still reaches it.) Main thread only."""

  def interrupt(signum, frame):
    del frame
    raise KeyboardInterrupt(f'signal {signum}')

  signal.signal(signal.SIGTERM, interrupt)


class _Phase:
  """A stretch of a run's time: its wall seconds less the compiling in it go
  to meta['timings'][name] (nothing for name None), the compiling to
  'compile_seconds', for each of `runs`."""

  def __init__(self, clock, runs: list, name: str | None):
    self.clock, self.runs, self.name = clock, runs, name
    self.t0, self.c0 = time.perf_counter(), clock.seconds
    self.wall = 0.0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()

  def stop(self) -> float:
    self.wall = time.perf_counter() - self.t0
    compiling = self.clock.seconds - self.c0
    for run in self.runs:
      t = run.meta['timings']
      t['compile_seconds'] += compiling
      if self.name:
        t[self.name] = t.get(self.name, 0.0) + max(self.wall - compiling, 0.0)
    return self.wall


class _Window(_Phase):
  """The updates between two fetches: what `_fetch` needs to count them."""

  def __init__(self, clock, runs: list):
    super().__init__(clock, runs, 'train_seconds')
    self.pending = {id(r): [] for r in runs}  # (step, losses, index, compiled)
    self.data_seconds = 0.0  # waiting for batches
    self.compiled = False


def _fetch(window: _Window, multi: bool) -> float:
  """Brings the window's losses to the host in one transfer and counts its
  updates (`_count`); returns its wall time."""
  arrays = {}
  for entries in window.pending.values():
    for _, losses, _, _ in entries:
      arrays[id(losses)] = losses
  host = dict(zip(arrays, jax.device_get(list(arrays.values()))))
  seconds = window.stop()
  for run in window.runs:
    entries = window.pending[id(run)]
    for step, losses, i, compiled in entries:
      if run.error:
        break
      loss = float(np.asarray(host[id(losses)]).reshape(-1)[i])
      _count(run, step, loss, compiled, multi)
    if entries and not window.compiled and not run.error:
      steady = run.meta['steady']
      steady['steps'] += len(entries)
      steady['update_seconds'] += seconds - window.data_seconds
      steady['loop_seconds'] += seconds
  return seconds


def _postfix(learner, runs: list, active: list, aux: dict) -> dict:
  live = [runs[j] for j in active if not runs[j].error]
  if not live:
    return {}
  postfix = dict(
      loss=f"{np.mean([r.meta['loss_curve'][-1][1] for r in live]):.3f}",
      val=f"{np.mean([r.meta['val_curve'][-1][1] for r in live]):.3f}",
      best=f"{np.mean([r.meta['best_val'] for r in live]):.3f}")
  postfix.update(learner.progress(aux))
  return postfix


def train(learner: Learner, runs: list, steps: int, eval_every: int,
          test_set, algorithm: str, progress: bool,
          fetch_every: int | None = None) -> list:
  """Trains `runs` to `steps` updates with `learner`; tests each on its best
  validation parameters and writes its results.json. A run whose loss is
  not finite stops (at the next fetch of the losses, at most `fetch_every`
  updates later; 1 waits for every update); the others finish, then its
  error is raised."""
  fetch_every = fetch_every or FETCH_EVERY
  clock = compile_cache.CompileClock()
  try:
    c0 = clock.seconds
    learner.start(runs, progress)  # may restore meta from a checkpoint
    for run in runs:
      run.meta.setdefault('timings', _no_timings())  # saved before timings
      run.meta['timings']['compile_seconds'] += clock.seconds - c0
    for j, run in enumerate(runs):
      if run.step == 0 and not run.meta['val_curve']:
        with _Phase(clock, [run], 'validate_seconds'):
          run.validate(0, learner.state(j)[0], learner)
  except BaseException:
    clock.close()
    for run in runs:
      run.close()
    raise
  desc = f'{learner.name} {algorithm}' + (
      f' seeds {",".join(str(r.seed) for r in runs)}' if len(runs) > 1 else '')
  bar = progress_lib.ProgressBar(
      total=steps, initial=min(r.step for r in runs), disable=not progress,
      dynamic_ncols=True, desc=desc)
  for run in runs:
    run.feed = input_pipeline.Prefetch(run.stream, steps - run.step,
                                       PREFETCH)
  train_clock = 0.0  # the loop's time, validations and checkpoints left out
  multi = len(runs) > 1
  window = None
  try:
    while True:
      active = [j for j, r in enumerate(runs) if r.step < steps and not r.error]
      if not active:
        break
      if window is None:
        window = _Window(clock, [runs[j] for j in active])
      t_data = time.perf_counter()
      batches = [next(runs[j].feed) for j in active]
      window.data_seconds += time.perf_counter() - t_data
      for group in seeds_lib.groups(batches):
        members = [active[p] for p in group]
        losses, aux, compiled = learner.step(
            members, [batches[p] for p in group], [runs[j].step for j in members])
        window.compiled |= compiled
        for i, j in enumerate(members):
          runs[j].step += 1
          window.pending[id(runs[j])].append((runs[j].step, losses, i,
                                              compiled))
      bar.step(window.compiled)  # a step that compiles ends its window
      due = [j for j in active
             if runs[j].step % eval_every == 0 or runs[j].step == steps]
      if not (due or window.compiled or
              any(runs[j].step % fetch_every == 0 for j in active)):
        continue
      train_clock += _fetch(window, multi)
      window = None
      if progress:
        bar.set_postfix(_postfix(learner, runs, active, aux), refresh=False)
      for j in due:
        run = runs[j]
        if run.error:
          continue
        with _Phase(clock, [run], 'validate_seconds'):
          run.meta['train_seconds'] += train_clock - run.clock
          run.clock = train_clock
          params, opt_state = learner.state(j)
          run.validate(run.step, params, learner)
          run.meta['learner'] = learner.checkpoint_meta(j)
          run.save(params, opt_state)
        if progress:
          bar.set_postfix(_postfix(learner, runs, active, aux), refresh=False)
  except KeyboardInterrupt as e:
    clock.close()
    if len(runs) == 1:
      latest = (runs[0].checkpoints.latest_step()
                if runs[0].checkpoints is not None else None)
      raise RunError(
          f'interrupted at step {runs[0].step}; ' + (
              f'the checkpoint of step {latest} is intact: rerun the same '
              'command to resume' if latest is not None else
              'no checkpoint was written yet: rerun the same command to '
              'start again')) from e
    raise RunError(
        f'interrupted at step {min(r.step for r in runs)}; every seed\'s last '
        'checkpoint is intact: rerun the same command to resume') from e
  except BaseException:
    clock.close()
    raise
  finally:
    bar.close()
    for run in runs:
      run.close()
  try:
    results = [None if run.error else _results(learner, run, test_set, steps,
                                               algorithm, clock)
               for run in runs]
  finally:
    clock.close()
  failed = [run.error for run in runs if run.error]
  if failed:
    raise RunError(failed[0] + (f' ({len(runs) - len(failed)} other seeds '
                                'finished)' if len(runs) > 1 else ''))
  return results


def _count(run: Run, step: int, loss: float, compiled: bool,
           multi: bool) -> None:
  """Update `step` of `run` as fetched: its loss point, or the error that
  stops the run (which then counts `step` updates)."""
  if compiled:
    run.meta['compile_steps'] += 1
  if not np.isfinite(loss):
    run.step = step
    last = run.checkpoints.latest_step() if run.checkpoints else None
    run.error = f'loss became {loss} at step {step}: training diverged'
    if last is not None:
      run.error += f'; the last good checkpoint (step {last}) is intact'
    elif run.checkpoints:
      run.error += ' before its first checkpoint; nothing was saved'
    if multi:
      run.error = f'seed {run.seed}: {run.error}'
  else:
    run.meta['loss_curve'].append([step, loss])


def _results(learner: Learner, run: Run, test_set, steps: int,
             algorithm: str, clock) -> dict:
  """Scores `run`'s best parameters on the test split; writes results.json.
  `timings`' checks_seconds is `Learner.results` (DEAR's fixed-point checks,
  with the model's own keys, which cost nothing beside them)."""
  meta, best_params = run.meta, run.best_params
  with _Phase(clock, [run], None):  # outside the timing
    warmup = extra_tests.warm(learner, best_params, test_set)
  with _Phase(clock, [run], 'test_seconds'), profiling.Stopwatch() as timed:
    test = learner.evaluate(best_params, test_set, per_graph=True)
  results = dict(
      algorithm=algorithm, model=learner.model, seed=run.seed,
      train_steps=int(steps), test_score=test['score'],
      test_scores=test.get('scores'),
      test_graph_scores=test.get('graph_scores'), val_score=meta['best_val'],
      val_scores=meta.get('best_scores'), best_step=meta['best_step'],
      test_nodes=int(batch_lib.num_nodes(test_set.batches[0])),
      test_graphs=int(test_set.num_samples),
      train_seconds=meta['train_seconds'],
      train_steps_per_second=_rate(meta['steady']['steps'],
                                   meta['steady']['update_seconds']),
      train_loop_steps_per_second=_rate(meta['steady']['steps'],
                                        meta['steady']['loop_seconds']),
      compile_steps=meta['compile_steps'],
      **timed.per_graph(test_set.num_samples),
      eval_warmup_waited=True,  # runs without it timed a batch twice
      eval_warmup=warmup,
      algo_steps_mean=float(np.mean(test_set.lengths) - 1),
      val_curve=meta['val_curve'], loss_curve=meta['loss_curve'],
      # the machine that tested the run (and timed it, unless it resumed
      # on another): the timing columns are only comparable on one machine
      hardware=profiling.hardware_line(),
      code=profiling.code_version())  # the commit (None: not a checkout)
  with _Phase(clock, [run], 'checks_seconds'):
    learner.results(results, run, best_params, test, test_set)
  with _Phase(clock, [run], 'extra_tests_seconds'):
    if getattr(run.dcfg, 'extra_test_lengths', ()):
      results['extra_tests'] = extra_tests.evaluate_sizes(
          learner, best_params, algorithm, run.dcfg,
          keep_hints=bool(test_set.batches[0]['hints']),
          keep_dir=os.path.join(run.workdir, extra_tests.KEPT_DIR),
          settings=(run.config.to_dict() if hasattr(run.config, 'to_dict')
                    else run.config, dataclasses.asdict(run.dcfg)))
  results['timings'] = dict(meta['timings'])
  write_results(run.workdir, results)
  shutil.rmtree(os.path.join(run.workdir, extra_tests.KEPT_DIR),
                ignore_errors=True)
  return results
