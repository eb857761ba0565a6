"""The one training loop of every model: `train(learner, runs, ...)`.

The Flax models (`dear_jax.train.FlaxLearner`, seeds stacked with vmap) and
dm-clrs's BaselineModel (`baselines.clrs_official.OfficialLearner`, a stack
of one) differ only in their `Learner`; this loop owns everything the
comparison depends on, so that it is the same for all of them:

* validation: before training (step 0), after every `eval_every` updates and
  after the last; steps count the updates done. A new best needs a strictly
  higher score; the test split is scored with the best parameters.
* `loss_curve`: [updates done, loss of that update] for every update.
* timing: `train_seconds` is the loop's wall time without validations and
  checkpoints; the steady-state rates count only iterations in which no
  learner call compiled (the learner reports whether its jitted step traced).
* the progress bar: the run's model name, loss, last and best validation.
* results.json: the common keys here, the model's own from `Learner.results`.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tqdm

from dear_jax import batches as batch_lib
from dear_jax import input_pipeline
from dear_jax import profiling
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
    batches -> (losses as numpy, aux dict, whether this call compiled)."""
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

  def evaluate(self, params, evalset) -> dict:
    """`dear_jax.train.evaluate`'s dict (score, scores, solver statistics)."""
    raise NotImplementedError

  def warm(self, params, evalset) -> None:
    """Compiles prediction on `evalset`, so that the timed test pass does not."""

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
                     compile_steps=0)
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.best_params, self.step = None, 0
    self.clock, self.error = 0.0, None  # training time at the last save

  def restore(self, state: dict, progress: bool) -> dict:
    """`state` (params, opt_state, best_params, data) from the latest
    checkpoint, or `state` itself when there is none."""
    start = self.checkpoints.latest_step()
    if start is not None:
      state, self.meta = self.checkpoints.restore(start, state)
      if self.meta['data_key'] != self.data_key:
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
    record = dict(step=step, val_score=v['score'],
                  **{k: v[k] for k in v if k.startswith(('solver', 'nonconv'))})
    with open(self.metrics_path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def save(self, params, opt_state) -> None:
    self.meta['step'] = self.step
    if self.checkpoints is not None:
      self.checkpoints.save(self.step, dict(
          params=params, opt_state=opt_state, best_params=self.best_params,
          data=self.stream.get_state()), self.meta)

  def close(self) -> None:
    if self.checkpoints is not None:
      self.checkpoints.close()


def _rate(steps: int, seconds: float) -> float:
  return steps / seconds if seconds > 0 else float('nan')


def _postfix(runs: list, active: list, aux: dict) -> dict:
  live = [runs[j] for j in active if not runs[j].error]
  if not live:
    return {}
  postfix = dict(
      loss=f"{np.mean([r.meta['loss_curve'][-1][1] for r in live]):.3f}",
      val=f"{np.mean([r.meta['val_curve'][-1][1] for r in live]):.3f}",
      best=f"{np.mean([r.meta['best_val'] for r in live]):.3f}")
  if 'solver' in aux:
    postfix['iters'] = f"{float(aux['solver'].iterations.mean()):.1f}"
    postfix['nonconv'] = f"{float(1 - aux['solver'].converged.mean()):.0%}"
  return postfix


def train(learner: Learner, runs: list, steps: int, eval_every: int,
          test_set, algorithm: str, progress: bool) -> list:
  """Trains `runs` to `steps` updates with `learner`; tests each on its best
  validation parameters and writes its results.json. A run whose loss is
  not finite stops; the others finish, then its error is raised."""
  try:
    learner.start(runs, progress)
    for j, run in enumerate(runs):
      if run.step == 0 and not run.meta['val_curve']:
        run.validate(0, learner.state(j)[0], learner)
  except BaseException:
    for run in runs:
      run.close()
    raise
  desc = f'{learner.name} {algorithm}' + (
      f' seeds {",".join(str(r.seed) for r in runs)}' if len(runs) > 1 else '')
  bar = tqdm.tqdm(total=steps, initial=min(r.step for r in runs),
                  disable=not progress, dynamic_ncols=True, desc=desc)
  clock = 0.0  # training time of the loop, validations and checkpoints left out
  try:
    while True:
      active = [j for j, r in enumerate(runs) if r.step < steps and not r.error]
      if not active:
        break
      t_data = time.perf_counter()
      batches = [next(runs[j].stream) for j in active]
      t_update = time.perf_counter()
      done, any_compiled = [], False
      for group in seeds_lib.groups(batches):
        members = [active[p] for p in group]
        loss, aux, compiled = learner.step(
            members, [batches[p] for p in group], [runs[j].step for j in members])
        any_compiled |= compiled
        done += [(j, float(l), compiled) for j, l in zip(members, loss)]
      t_done = time.perf_counter()
      clock += t_done - t_data
      for j, loss, compiled in sorted(done):
        _count(runs[j], loss, compiled, any_compiled, t_data, t_update, t_done,
               multi=len(runs) > 1)
      bar.set_postfix(_postfix(runs, active, aux), refresh=False)
      bar.update(1)
      for j in active:
        run = runs[j]
        if not run.error and (run.step % eval_every == 0 or run.step == steps):
          run.meta['train_seconds'] += clock - run.clock
          run.clock = clock
          params, opt_state = learner.state(j)
          run.validate(run.step, params, learner)
          run.meta['learner'] = learner.checkpoint_meta(j)
          run.save(params, opt_state)
          bar.set_postfix(_postfix(runs, active, aux), refresh=False)
  except KeyboardInterrupt as e:
    if len(runs) == 1:
      raise RunError(
          f'interrupted at step {runs[0].step}; ' + (
              f'the checkpoint of step {runs[0].checkpoints.latest_step()} '
              'is intact: rerun the same command to resume'
              if runs[0].checkpoints else 'rerun to start again')) from e
    raise RunError(
        f'interrupted at step {min(r.step for r in runs)}; every seed\'s last '
        'checkpoint is intact: rerun the same command to resume') from e
  finally:
    bar.close()
    for run in runs:
      run.close()
  results = [None if run.error else _results(learner, run, test_set, steps,
                                             algorithm)
             for run in runs]
  failed = [run.error for run in runs if run.error]
  if failed:
    raise RunError(failed[0] + (f' ({len(runs) - len(failed)} other seeds '
                                'finished)' if len(runs) > 1 else ''))
  return results


def _count(run: Run, loss: float, compiled: bool, any_compiled: bool,
           t_data: float, t_update: float, t_done: float, multi: bool) -> None:
  """One update of `run`: its step, loss point and steady-state timing."""
  if compiled:
    run.meta['compile_steps'] += 1
  elif not any_compiled:
    run.meta['steady']['steps'] += 1
    run.meta['steady']['update_seconds'] += t_done - t_update
    run.meta['steady']['loop_seconds'] += t_done - t_data
  run.step += 1
  if not np.isfinite(loss):
    last = run.checkpoints.latest_step() if run.checkpoints else None
    run.error = (f'loss became {loss} at step {run.step}: training diverged'
                 + (f'; the last good checkpoint (step {last}) is intact'
                    if run.checkpoints else ''))
    if multi:
      run.error = f'seed {run.seed}: {run.error}'
  else:
    run.meta['loss_curve'].append([run.step, loss])


def _results(learner: Learner, run: Run, test_set, steps: int,
             algorithm: str) -> dict:
  """Scores `run`'s best parameters on the test split; writes results.json."""
  meta, best_params = run.meta, run.best_params
  learner.warm(best_params, test_set)  # compile outside the timing
  t_eval = time.perf_counter()
  test = learner.evaluate(best_params, test_set)
  eval_seconds = time.perf_counter() - t_eval
  results = dict(
      algorithm=algorithm, model=learner.model, seed=run.seed,
      train_steps=int(steps), test_score=test['score'],
      test_scores=test.get('scores'), val_score=meta['best_val'],
      val_scores=meta.get('best_scores'), best_step=meta['best_step'],
      test_nodes=int(batch_lib.num_nodes(test_set.batches[0])),
      test_graphs=int(test_set.num_samples),
      train_seconds=meta['train_seconds'],
      train_steps_per_second=_rate(meta['steady']['steps'],
                                   meta['steady']['update_seconds']),
      train_loop_steps_per_second=_rate(meta['steady']['steps'],
                                        meta['steady']['loop_seconds']),
      compile_steps=meta['compile_steps'],
      eval_seconds_per_graph=eval_seconds / test_set.num_samples,
      algo_steps_mean=float(np.mean(test_set.lengths) - 1),
      val_curve=meta['val_curve'], loss_curve=meta['loss_curve'],
      # the machine that tested the run (and timed it, unless it resumed
      # on another): the timing columns are only comparable on one machine
      hardware=profiling.hardware_line())
  learner.results(results, run, best_params, test, test_set)
  if getattr(run.dcfg, 'extra_test_lengths', ()):
    from dear_jax import extra_tests  # pylint: disable=g-import-not-at-top
    results['extra_tests'] = extra_tests.evaluate_sizes(
        learner, best_params, algorithm, run.dcfg,
        keep_hints=bool(test_set.batches[0]['hints']))
  write_results(run.workdir, results)
  return results
