"""Training and evaluation: `train_and_evaluate(config, workdir) -> results`.

Adam with global-norm clipping; validation every `eval_every` steps (and at
step 0, as run.py); the best-by-validation parameters are tested on the
official OOD split. Every validation writes an orbax checkpoint holding the
parameters, optimiser state, best parameters and the data stream's RNG
states, so a killed run restarted on the same workdir ends exactly as an
uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import dataclasses

from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import input_pipeline
from dear_jax import sections
from dear_jax import seeds as seeds_lib
from dear_jax import splits
from dear_jax.checkpoints import Checkpoints as _Checkpoints
from dear_jax.checkpoints import RunError, load_best_params  # noqa: F401  (re-exported)
from dear_jax.model import count_params
from dear_jax.results import summary_table, write_results


@dataclasses.dataclass(frozen=True)
class TrainConfig(sections.Section):
  """The `train` section, checked."""
  PREFIX = 'train.'
  steps: int = 500
  learning_rate: float = 1e-3
  grad_clip: float = 1.0
  eval_every: int = 50
  seed: int = 0
  data_parallel: bool = False  # batches split over the local devices

  @classmethod
  def check(cls, v, prefix: str) -> None:
    for name in ('steps', 'eval_every', 'learning_rate', 'grad_clip'):
      sections.positive(prefix + name, getattr(v, name))


def typed(config):
  """config (a ConfigDict or validation.RunConfig) as a RunConfig."""
  from dear_jax import validation  # pylint: disable=g-import-not-at-top
  if isinstance(config, validation.RunConfig):
    return config
  return validation.typed(config)


def data_config(config) -> input_pipeline.DataConfig:
  return input_pipeline.DataConfig.coerce(config.data)


# What these keys held for "absent" before they took None: configs stored by
# earlier versions (results.json, protocol.json) read as today's.
_OLD_ABSENT = {('data', 'val_num_samples'): 0, ('data', 'test_num_samples'): 0,
               ('dear', 'align_teacher'): ''}


def upgrade_stored_config(d: dict) -> dict:
  """A stored config dict with the old sentinels above read as None."""
  d = copy.deepcopy(d)
  for (section, key), old in _OLD_ABSENT.items():
    part = d.get(section)
    if isinstance(part, dict) and key in part and part[key] == old and (
        type(part[key]) is type(old)):
      part[key] = None
  return d


def build_model(config, spec: dict, sample_batch: dict):
  """The config's model_kind, given its typed sections (`typed`)."""
  run = typed(config)
  if run.model_kind == 'nar':
    from dear_jax.nar import StepwiseNAR  # pylint: disable=g-import-not-at-top
    return StepwiseNAR(spec, sample_batch, run.model, run.nar.hint_mode)
  from dear_jax.dear import EquilibriumReasoner  # pylint: disable=g-import-not-at-top
  return EquilibriumReasoner(spec, sample_batch, run.model, run.dear)


def uses_hints(config) -> bool:
  """Training batches keep hints for the NAR, and for DEAR's alignment
  (they give the teacher its step count)."""
  return config.model_kind == 'nar' or (config.model_kind == 'dear' and
                                        config.dear.align_weight > 0)


def make_optimizer(config):
  return optax.chain(optax.clip_by_global_norm(config.train.grad_clip),
                     optax.adam(config.train.learning_rate))


def make_update(model, optimizer):
  """The un-jitted update: `make_train_step` jits it, `seeds.SeedStack`
  vmaps it over seeds."""

  def update(params, opt_state, batch, step_key, step=None):
    (loss, aux), grads = jax.value_and_grad(model.loss, has_aux=True)(
        params, batch, step_key, step)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  return update


def make_train_step(model, optimizer):
  """The one jitted update; compare's memory column and the benchmarks
  measure exactly what training runs."""
  return jax.jit(make_update(model, optimizer))


def setup(config, spec: dict, sample_batch: dict, key):
  """(model, jitted train step, fresh params, fresh optimiser state)."""
  model = build_model(config, spec, sample_batch)
  optimizer = make_optimizer(config)
  params = model.init(key, sample_batch)
  return (model, make_train_step(model, optimizer), params,
          optimizer.init(params))


def evaluate(model, predict_fn, params, evalset) -> dict:
  """Scores a split with `clrs.evaluate` (pooled over the whole split)."""
  preds, stats = [], []
  for batch in evalset.batches:
    out, aux = predict_fn(params, batch)
    preds.append(jax.device_get(out))
    if 'solver' in aux:
      stats.append(jax.device_get(aux['solver']))
  n = evalset.num_samples
  preds = {k: np.concatenate([p[k] for p in preds])[:n] for k in preds[0]}
  clrs = clrs_lib.clrs()
  scores = clrs.evaluate(clrs_lib.datapoints(evalset.outputs, evalset.spec),
                         {dp.name: dp for dp in
                          clrs_lib.datapoints(preds, evalset.spec)})
  result = {'score': float(scores['score'])}
  if stats:
    iters = np.concatenate([s.iterations for s in stats])[:n]
    result.update(
        solver_iters_mean=float(iters.mean()),
        solver_iters_p95=float(np.percentile(iters, 95)),
        nonconverged_fraction=float(
            1 - np.concatenate([s.converged for s in stats])[:n].mean()),
        final_residual_mean=float(
            np.concatenate([s.residual for s in stats])[:n].mean()),
        nonfinite_graphs=int(
            (np.concatenate([s.nonfinite for s in stats])[:n] > 0).sum()),
        iterations=iters.tolist())
  return result


def _rate(steps: int, seconds: float) -> float:
  return steps / seconds if seconds > 0 else float('nan')


# Keys that change how a run executes, not what it computes: a finished
# workdir stays finished when only these differ.
EXECUTION_KEYS = ('data_parallel',)


def _comparable(config_dict: dict) -> dict:
  d = upgrade_stored_config(
      json.loads(json.dumps(config_dict, sort_keys=True, default=float)))
  for k in EXECUTION_KEYS:
    d.get('train', {}).pop(k, None)
  return d


def _finished(config, workdir: str, reevaluate: bool, progress: bool):
  """The stored results of a finished workdir with the same config, or None."""
  os.makedirs(workdir, exist_ok=True)
  done_path = os.path.join(workdir, 'results.json')
  if os.path.exists(done_path) and not reevaluate:
    with open(done_path) as f:
      done = json.load(f)
    if (done.get('train_steps') == int(config.train.steps) and
        _comparable(done.get('config') or {}) == _comparable(config.to_dict())):
      if progress:
        print(f'already finished: {done_path} (--reevaluate scores it again)')
      return done
  return None


def with_seed(config, seed: int):
  config = copy.deepcopy(config)
  config.train.seed = int(seed)
  return config


def train_and_evaluate(config, workdir: str, algorithm: str,
                       progress: bool = True, reevaluate: bool = False) -> dict:
  """Trains `config.model_kind` on `algorithm`; writes WORKDIR/results.json.

  A workdir with checkpoints resumes from the latest one; a finished one
  (results.json of the same steps) returns its results without work unless
  `reevaluate`."""
  return train_seeds(config, [config.train.seed], [workdir], algorithm,
                     progress, reevaluate)[0]


def train_seeds(config, seeds, workdirs, algorithm: str, progress: bool = True,
                reevaluate: bool = False) -> list:
  """Trains the seeds together (one vmapped step, `dear_jax/seeds.py`), each
  into its own workdir exactly as `train_and_evaluate` would; their results.

  Finished workdirs are answered from results.json and left out of the stack.
  A seed whose loss diverges leaves the stack; the others finish, then the
  divergence is raised."""
  from dear_jax import validation  # pylint: disable=g-import-not-at-top
  validation.check_config(config)  # what the CLI checks, for every caller
  configs = [with_seed(config, s) for s in seeds]
  results = [_finished(c, w, reevaluate, progress)
             for c, w in zip(configs, workdirs)]
  todo = [i for i, r in enumerate(results) if r is None]
  if todo:
    trained = _train([configs[i] for i in todo], [workdirs[i] for i in todo],
                     algorithm, progress)
    for i, r in zip(todo, trained):
      results[i] = r
  return results


class _Seed:
  """One seed of a (stacked) run: its data, checkpoints and bookkeeping."""

  def __init__(self, config, workdir, algorithm, dcfg, hints, test_key):
    self.config, self.workdir = config, workdir
    self.seed = int(config.train.seed)
    self.stream = input_pipeline.train_stream(algorithm, dcfg, self.seed,
                                              keep_hints=hints,
                                              recorded=dcfg.recorded_stream)
    self.val_set = splits.load_split(algorithm, 'val', dcfg, self.seed,
                                     keep_hints=hints)
    self.data_key = self.val_set.key + test_key
    self.checkpoints = _Checkpoints(os.path.join(workdir, 'checkpoints'))
    self.meta = dict(step=0, best_val=-1.0, best_step=0, val_curve=[],
                     loss_curve=[], train_seconds=0.0, data_key=self.data_key,
                     steady=dict(steps=0, update_seconds=0.0,
                                 loop_seconds=0.0),
                     compile_steps=0)
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.best_params, self.step, self.losses = None, 0, []
    self.clock, self.error = 0.0, None  # training time at the last save

  def restore(self, state: dict, progress: bool) -> dict:
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

  def validate(self, step, params, model, predict):
    v = evaluate(model, predict, params, self.val_set)
    self.meta['val_curve'].append([step, v['score']])
    if v['score'] > self.meta['best_val']:
      self.meta.update(best_val=v['score'], best_step=step)
      self.best_params = params
    record = dict(step=step, val_score=v['score'],
                  **{k: v[k] for k in v if k.startswith(('solver', 'nonconv'))})
    with open(self.metrics_path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def save(self, params, opt_state) -> None:
    self.meta['step'] = self.step
    self.checkpoints.save(self.step, dict(
        params=params, opt_state=opt_state, best_params=self.best_params,
        data=self.stream.get_state()), self.meta)


def _train(configs, workdirs, algorithm: str, progress: bool) -> list:
  """The training loop of `train_seeds` (unfinished seeds only)."""
  config = typed(configs[0])  # the seeds differ in train.seed only
  dcfg = config.data
  hints = uses_hints(config)
  spec = clrs_lib.processed_spec(algorithm)
  test_set = splits.load_split(algorithm, 'test', dcfg, keep_hints=hints)
  runs = [_Seed(c, w, algorithm, dcfg, hints, test_set.key)
          for c, w in zip(configs, workdirs)]
  model, train_step, params, opt_state = setup(
      config, spec, runs[0].val_set.batches[0],
      jax.random.fold_in(jax.random.PRNGKey(runs[0].seed), 0))
  optimizer = make_optimizer(config)
  predict = jax.jit(model.predict)
  steps = int(config.train.steps)
  states = []
  try:
    for j, run in enumerate(runs):
      if j:
        params = model.init(jax.random.fold_in(jax.random.PRNGKey(run.seed), 0),
                            run.val_set.batches[0])
        opt_state = optimizer.init(params)
      state = run.restore(dict(params=params, opt_state=opt_state,
                               best_params=params, data=run.stream.get_state()),
                          progress)
      states.append((state['params'], state['opt_state']))
      if run.step == 0 and not run.meta['val_curve']:
        run.validate(0, state['params'], model, predict)
    mesh = None
    if config.train.data_parallel:
      seeds_lib.check_divisible(dcfg.batch_size)
      mesh = seeds_lib.data_mesh()
    stack = seeds_lib.SeedStack(states, [r.seed for r in runs],
                               make_update(model, optimizer), train_step, mesh)
  except BaseException:
    for run in runs:
      run.checkpoints.close()
    raise
  del states, params, opt_state
  desc = f'{config.model_kind} {algorithm}' + (
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
        loss, aux, compiled = stack.step(
            members, [batches[p] for p in group], [runs[j].step for j in members])
        any_compiled |= compiled
        done += [(j, float(l), compiled) for j, l in zip(members, loss)]
      t_done = time.perf_counter()
      clock += t_done - t_data
      for j, loss, compiled in sorted(done):
        run = runs[j]
        # Steady state: steps that did not compile (the step compiles once
        # per batch shape), so the rate compares with clrs_official's.
        if compiled:
          run.meta['compile_steps'] += 1
        elif not any_compiled:
          run.meta['steady']['steps'] += 1
          run.meta['steady']['update_seconds'] += t_done - t_update
          run.meta['steady']['loop_seconds'] += t_done - t_data
        run.step += 1
        if not np.isfinite(loss):
          run.error = (
              f'loss became {loss} at step {run.step}: training diverged; the '
              f'last good checkpoint (step {run.checkpoints.latest_step()}) is '
              'intact')
          if len(runs) > 1:
            run.error = f'seed {run.seed}: {run.error}'
        else:
          run.losses.append(loss)
      live = [runs[j] for j in active if not runs[j].error]
      postfix = dict(loss=f'{np.mean([r.losses[-1] for r in live]):.3f}',
                     val=f"{np.mean([r.meta['val_curve'][-1][1] for r in live]):.3f}"
                     ) if live else {}
      if 'solver' in aux:
        postfix['iters'] = f"{float(aux['solver'].iterations.mean()):.1f}"
        postfix['nonconv'] = f"{float(1 - aux['solver'].converged.mean()):.0%}"
      bar.set_postfix(postfix, refresh=False)
      bar.update(1)
      for j in active:
        run = runs[j]
        if not run.error and (run.step % config.train.eval_every == 0 or
                              run.step == steps):
          run.meta['train_seconds'] += clock - run.clock
          run.clock = clock
          run.meta['loss_curve'].append([run.step, float(np.mean(run.losses))])
          run.losses = []
          params, opt_state = stack.get(j)
          run.validate(run.step, params, model, predict)
          run.save(params, opt_state)
  except KeyboardInterrupt as e:
    if len(runs) == 1:
      raise RunError(
          f'interrupted at step {runs[0].step}; the checkpoint of step '
          f'{runs[0].checkpoints.latest_step()} is intact: rerun the same '
          'command to resume') from e
    raise RunError(
        f'interrupted at step {min(r.step for r in runs)}; every seed\'s last '
        'checkpoint is intact: rerun the same command to resume') from e
  finally:
    bar.close()
    for run in runs:
      run.checkpoints.close()
  results = [None if run.error else _results(run, config, model, predict,
                                             test_set, algorithm)
             for run in runs]
  failed = [run.error for run in runs if run.error]
  if failed:
    raise RunError(failed[0] + (f' ({len(runs) - len(failed)} other seeds '
                                'finished)' if len(runs) > 1 else ''))
  return results


def _results(run, typed_config, model, predict, test_set,
             algorithm: str) -> dict:
  """Scores `run`'s best parameters on the test split; writes results.json."""
  config, meta, best_params = run.config, run.meta, run.best_params
  dear_cfg = typed_config.dear
  predict(best_params, test_set.batches[0])  # compile outside the timing
  t_eval = time.time()
  test = evaluate(model, predict, best_params, test_set)
  eval_seconds = time.time() - t_eval
  results = dict(
      algorithm=algorithm, model=config.model_kind, seed=run.seed,
      train_steps=int(config.train.steps), test_score=test['score'],
      val_score=meta['best_val'],
      best_step=meta['best_step'], test_nodes=batch_lib.num_nodes(
          test_set.batches[0]), test_graphs=test_set.num_samples,
      train_seconds=meta['train_seconds'],
      train_steps_per_second=_rate(meta['steady']['steps'],
                                   meta['steady']['update_seconds']),
      train_loop_steps_per_second=_rate(meta['steady']['steps'],
                                        meta['steady']['loop_seconds']),
      compile_steps=meta['compile_steps'],
      eval_seconds_per_graph=eval_seconds / test_set.num_samples,
      algo_steps_mean=float(np.mean(test_set.lengths) - 1),
      num_params=count_params(best_params), val_curve=meta['val_curve'],
      loss_curve=meta['loss_curve'], config=config.to_dict())
  if config.model_kind == 'nar':
    results['hint_mode'] = config.nar.hint_mode
  for k, v in test.items():
    if k != 'score':
      results[k if k != 'iterations' else 'solver_iterations'] = v
  if 'iterations' in test:
    results['test_algo_steps'] = (test_set.lengths - 1).tolist()
  if config.model_kind == 'dear' and dear_cfg.diagnostics:
    from dear_jax import diagnostics  # pylint: disable=g-import-not-at-top
    results.update(diagnostics.fixed_point_check(
        model, best_params, test_set, ref_tol=dear_cfg.check_tol,
        ref_cap=dear_cfg.check_max_iter))
    results.update(diagnostics.score_by_tol(model, best_params, test_set,
                                            evaluate, operating=test))
  write_results(run.workdir, results)
  return results


__all__ = ['train_and_evaluate', 'train_seeds', 'evaluate', 'RunError',
           'summary_table']
