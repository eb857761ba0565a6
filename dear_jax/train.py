"""Training and evaluation: `train_and_evaluate(config, workdir) -> results`.

Adam with global-norm clipping; validation every `eval_every` steps (and at
step 0, as run.py); the best-by-validation parameters are tested on the
official OOD split. Every validation writes an orbax checkpoint holding the
parameters, optimiser state, best parameters and the data stream's RNG
states, so a killed run restarted on the same workdir ends exactly as an
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from dear_jax import data as data_lib
from dear_jax.model import count_params
from dear_jax.results import summary_table, write_results


class RunError(Exception):
  """A problem the user can fix; reported as one line, exit code 2."""


def data_config(config) -> data_lib.DataConfig:
  d = config.data.to_dict()
  d['val_num_samples'] = d['val_num_samples'] or None
  d['test_num_samples'] = d['test_num_samples'] or None
  return data_lib.DataConfig.from_dict(d)


def build_model(config, spec: dict, sample_batch: dict):
  if config.model_kind == 'nar':
    from dear_jax.nar import StepwiseNAR  # pylint: disable=g-import-not-at-top
    return StepwiseNAR(spec, sample_batch, config.model, config.nar.hint_mode)
  from dear_jax.dear import EquilibriumReasoner  # pylint: disable=g-import-not-at-top
  return EquilibriumReasoner(spec, sample_batch, config.model, config.dear)


def uses_hints(config) -> bool:
  return config.model_kind == 'nar'


def make_optimizer(config):
  return optax.chain(optax.clip_by_global_norm(config.train.grad_clip),
                     optax.adam(config.train.learning_rate))


def make_train_step(model, optimizer):
  """The one jitted update; compare's memory column and the benchmarks
  measure exactly what training runs."""

  @jax.jit
  def train_step(params, opt_state, batch, step_key):
    (loss, aux), grads = jax.value_and_grad(model.loss, has_aux=True)(
        params, batch, step_key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  return train_step


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
  clrs = data_lib.clrs()
  scores = clrs.evaluate(data_lib.datapoints(evalset.outputs, evalset.spec),
                         {dp.name: dp for dp in
                          data_lib.datapoints(preds, evalset.spec)})
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


class _Checkpoints:
  """orbax CheckpointManager over {state pytree, meta json}."""

  def __init__(self, directory: str):
    self._mngr = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
        item_names=('state', 'meta'))

  def latest_step(self):
    return self._mngr.latest_step()

  def save(self, step: int, state: dict, meta: dict) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._mngr.wait_until_finished()

  def restore(self, step: int, like: dict):
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for damaged files
      raise RunError(
          f'checkpoint {step} in {self._mngr.directory} cannot be restored '
          f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); move it away '
          'or use another --workdir') from e
    return restored.state, restored.meta

  def close(self):
    self._mngr.close()


def load_best_params(workdir: str):
  """The best-by-validation parameters of a run's latest checkpoint."""
  checkpoints = _Checkpoints(os.path.join(workdir, 'checkpoints'))
  try:
    step = checkpoints.latest_step()
    if step is None:
      raise RunError(f'{workdir} has no checkpoint')
    state, _ = checkpoints.restore(step, None)
  finally:
    checkpoints.close()
  return state['best_params']


def _rate(steps: int, seconds: float) -> float:
  return steps / seconds if seconds > 0 else float('nan')


def train_and_evaluate(config, workdir: str, algorithm: str,
                       progress: bool = True, reevaluate: bool = False) -> dict:
  """Trains `config.model_kind` on `algorithm`; writes WORKDIR/results.json.

  A workdir with checkpoints resumes from the latest one; a finished one
  (results.json of the same steps) returns its results without work unless
  `reevaluate`."""
  os.makedirs(workdir, exist_ok=True)
  done_path = os.path.join(workdir, 'results.json')
  if os.path.exists(done_path) and not reevaluate:
    with open(done_path) as f:
      done = json.load(f)
    same_config = done.get('config') == json.loads(
        json.dumps(config.to_dict(), sort_keys=True, default=float))
    if done.get('train_steps') == int(config.train.steps) and same_config:
      if progress:
        print(f'already finished: {done_path} (--reevaluate scores it again)')
      return done
  dcfg = data_config(config)
  seed = int(config.train.seed)
  hints = uses_hints(config)
  spec = data_lib.processed_spec(algorithm)
  stream = data_lib.train_stream(algorithm, dcfg, seed, keep_hints=hints,
                                 recorded=dcfg.recorded_stream)
  val_set = data_lib.load_split(algorithm, 'val', dcfg, seed, keep_hints=hints)
  test_set = data_lib.load_split(algorithm, 'test', dcfg, keep_hints=hints)

  key = jax.random.PRNGKey(seed)
  model, train_step, params, opt_state = setup(
      config, spec, val_set.batches[0], jax.random.fold_in(key, 0))
  predict = jax.jit(model.predict)

  checkpoints = _Checkpoints(os.path.join(workdir, 'checkpoints'))
  state = dict(params=params, opt_state=opt_state, best_params=params,
               data=stream.get_state())
  meta = dict(step=0, best_val=-1.0, best_step=0, val_curve=[], loss_curve=[],
              train_seconds=0.0, data_key=val_set.key + test_set.key,
              steady=dict(steps=0, update_seconds=0.0, loop_seconds=0.0),
              compile_steps=0)
  start = checkpoints.latest_step()
  if start is not None:
    state, meta = checkpoints.restore(start, state)
    if meta['data_key'] != val_set.key + test_set.key:
      raise RunError(f'{workdir} holds a run with another data protocol; '
                     'use another --workdir')
    stream.set_state(state['data'])
    if progress:
      print(f'resuming from step {meta["step"]} ({workdir})')
  params, opt_state = state['params'], state['opt_state']
  best_params = state['best_params']
  steps = int(config.train.steps)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')

  def validate(step, params):
    nonlocal best_params
    v = evaluate(model, predict, params, val_set)
    meta['val_curve'].append([step, v['score']])
    if v['score'] > meta['best_val']:
      meta.update(best_val=v['score'], best_step=step)
      best_params = params
    record = dict(step=step, val_score=v['score'],
                  **{k: v[k] for k in v if k.startswith(('solver', 'nonconv'))})
    with open(metrics_path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    return v

  if meta['step'] == 0 and not meta['val_curve']:
    validate(0, params)
  bar = tqdm.tqdm(total=steps, initial=meta['step'], disable=not progress,
                  dynamic_ncols=True, desc=f'{config.model_kind} {algorithm}')
  step = meta['step']
  seen_shapes = set()
  losses = []
  t0 = time.time()
  try:
    while step < steps:
      t_data = time.perf_counter()
      batch = next(stream)
      shapes = str(jax.tree.map(np.shape, batch))
      t_update = time.perf_counter()
      params, opt_state, loss, aux = train_step(
          params, opt_state, batch, jax.random.fold_in(key, step + 1))
      loss = float(loss)
      t_done = time.perf_counter()
      # Steady state: steps that did not compile (train_step compiles once
      # per batch shape), so the rate compares with clrs_official's.
      if shapes in seen_shapes:
        meta['steady']['steps'] += 1
        meta['steady']['update_seconds'] += t_done - t_update
        meta['steady']['loop_seconds'] += t_done - t_data
      else:
        seen_shapes.add(shapes)
        meta['compile_steps'] += 1
      step += 1
      if not np.isfinite(loss):
        raise RunError(
            f'loss became {loss} at step {step}: training diverged; the last '
            f'good checkpoint (step {checkpoints.latest_step()}) is intact')
      losses.append(loss)
      postfix = dict(loss=f'{loss:.3f}', val=f"{meta['val_curve'][-1][1]:.3f}")
      if 'solver' in aux:
        postfix['iters'] = f"{float(aux['solver'].iterations.mean()):.1f}"
        postfix['nonconv'] = f"{float(1 - aux['solver'].converged.mean()):.0%}"
      bar.set_postfix(postfix, refresh=False)
      bar.update(1)
      if step % config.train.eval_every == 0 or step == steps:
        meta['train_seconds'] += time.time() - t0
        meta['loss_curve'].append([step, float(np.mean(losses))])
        losses = []
        validate(step, params)
        meta['step'] = step
        checkpoints.save(step, dict(params=params, opt_state=opt_state,
                                    best_params=best_params,
                                    data=stream.get_state()), meta)
        t0 = time.time()
  except KeyboardInterrupt as e:
    raise RunError(f'interrupted at step {step}; the checkpoint of step '
                   f'{checkpoints.latest_step()} is intact: rerun the same '
                   'command to resume') from e
  finally:
    bar.close()
    checkpoints.close()

  predict(best_params, test_set.batches[0])  # compile outside the timing
  t_eval = time.time()
  test = evaluate(model, predict, best_params, test_set)
  eval_seconds = time.time() - t_eval
  results = dict(
      algorithm=algorithm, model=config.model_kind, seed=seed,
      train_steps=steps, test_score=test['score'], val_score=meta['best_val'],
      best_step=meta['best_step'], test_nodes=data_lib.num_nodes(
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
  if config.model_kind == 'dear' and config.dear.diagnostics:
    from dear_jax import diagnostics  # pylint: disable=g-import-not-at-top
    results.update(diagnostics.fixed_point_check(
        model, best_params, test_set, ref_tol=config.dear.check_tol,
        ref_cap=config.dear.check_max_iter))
    results.update(diagnostics.score_by_tol(model, best_params, test_set,
                                            evaluate, operating=test))
  write_results(workdir, results)
  return results


__all__ = ['train_and_evaluate', 'evaluate', 'RunError', 'summary_table']
