"""Training and evaluation: `train_and_evaluate(config, workdir) -> results`.

The Flax models' side of `dear_jax.loop` (the one loop of every model, which
sets the validation, loss-logging and timing rules): Adam with global-norm
clipping, seeds stacked in one vmapped step, and `evaluate`, the scoring of
every model. Every validation writes an orbax checkpoint holding the
parameters, optimiser state, best parameters and the data stream's RNG
states, so a killed run restarted on the same workdir ends exactly as an
uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dear_jax import clrs_lib
from dear_jax import input_pipeline
from dear_jax import diagnostics
from dear_jax import factory
from dear_jax import loop
from dear_jax import nar
from dear_jax import profiling
from dear_jax import run_config
from dear_jax import seeds as seeds_lib
from dear_jax import splits
from dear_jax.checkpoints import RunError
from dear_jax.model import count_params
from dear_jax.results import REQUIRED_KEYS, read_json, summary_table, write_results


def data_config(config) -> input_pipeline.DataConfig:
  return input_pipeline.DataConfig.coerce(config.data)


# What these keys held for "absent" before they took None: configs stored by
# earlier versions (results.json, protocol.json) read as today's.
_OLD_ABSENT = {('data', 'val_num_samples'): 0, ('data', 'test_num_samples'): 0,
               ('dear', 'align_teacher'): ''}
# Keys added after configs were stored, with the value that reproduces what
# those runs did: a stored config without one reads as having it.
_ADDED_LATER = {('dear', 'spectral_norm'): False, ('dear', 'check_graphs'): 0,
                ('dear', 'broyden_history'): 0,
                ('nar', 'learn_termination'): False,
                ('nar', 'max_steps_factor'): 6.0,
                ('data', 'extra_test_lengths'): [],
                ('data', 'extra_test_num_samples'): 100,
                ('data', 'extra_test_max_seconds'): None,
                ('model', 'aggregation'): 'max', ('model', 'latent_decay'): 1.0,
                ('model', 'test_aggregation'): None,
                ('model', 'adaptive_temperature'): False,
                ('data', 'options'): [], ('data', 'pad_nodes'): False}


def upgrade_stored_config(d: dict) -> dict:
  """A stored config dict as today's: the old sentinels above read as None,
  keys added later as the value the run used."""
  d = copy.deepcopy(d)
  for (section, key), old in _OLD_ABSENT.items():
    part = d.get(section)
    if isinstance(part, dict) and key in part and part[key] == old and (
        type(part[key]) is type(old)):
      part[key] = None
  for (section, key), value in _ADDED_LATER.items():
    part = d.get(section)
    if isinstance(part, dict):
      part.setdefault(key, value)
  return d


def config_to_store(config, workdir: str) -> dict:
  """`config` as results.json stores it: the alignment teacher as a path
  relative to the run's workdir, so that a run folder (a sweep's results,
  a Ray worker's temporary --out) can move without pointing elsewhere."""
  d = config.to_dict()
  teacher = d.get('dear', {}).get('align_teacher')
  if teacher:
    d['dear']['align_teacher'] = os.path.relpath(os.path.abspath(teacher),
                                                 os.path.abspath(workdir))
  return d


def stored_config(config_dict: dict, workdir: str | None = None):
  """A results.json 'config' as a ConfigDict again: old sentinels read as
  None, lists back to tuples (run folders written by earlier versions); with
  `workdir`, the run's folder, a relative alignment teacher as a path again."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(upgrade_stored_config(config_dict))
  config.data.train_sizes = tuple(config.data.train_sizes)
  teacher = config.dear.get('align_teacher')
  if workdir is not None and teacher and not os.path.isabs(teacher):
    config.dear.align_teacher = os.path.normpath(os.path.join(workdir, teacher))
  return config


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


def make_train_step(model, optimizer, donate: bool = False):
  """The one jitted update; compare's memory column and the benchmarks
  measure exactly what training runs. `donate`: the step reuses the buffers
  of the parameters and optimiser state it is given (as dm-clrs's does), so
  the caller must not read them again."""
  return jax.jit(make_update(model, optimizer),
                 donate_argnums=(0, 1) if donate else ())


def setup(config, spec: dict, sample_batch: dict, key, donate: bool = True):
  """(model, jitted train step, fresh params, fresh optimiser state); the
  step donates its inputs (`make_train_step`) unless `donate` is False."""
  model = factory.build_model(config, spec, sample_batch)
  optimizer = make_optimizer(config)
  params = model.init(key, sample_batch)
  return (model, make_train_step(model, optimizer, donate), params,
          optimizer.init(params))


def train_step_mb(config, spec: dict, init_batch: dict, batch: dict):
  """profiling.compiled_mb of the train step (`make_train_step`) on `batch`;
  parameters come from `init_batch` (they do not depend on n)."""
  _, step, params, opt_state = setup(config, spec, init_batch,
                                     jax.random.PRNGKey(0))
  return profiling.compiled_mb(step.lower(params, opt_state, batch,
                                          jax.random.PRNGKey(1)).compile())


def graph_scores(evalset, preds: dict) -> list:
  """`clrs.evaluate`'s score of each graph alone: what intervals over the
  test graphs are computed from (the split's 'score' pools the graphs)."""
  clrs = clrs_lib.clrs()
  one = lambda tree, i: {k: v[i:i + 1] for k, v in tree.items()}
  return [float(clrs.evaluate(
      clrs_lib.datapoints(one(evalset.outputs, i), evalset.spec),
      {dp.name: dp for dp in clrs_lib.datapoints(one(preds, i),
                                                 evalset.spec)})['score'])
          for i in range(evalset.num_samples)]


def evaluate(model, predict_fn, params, evalset, per_graph: bool = False,
             done: list | None = None) -> dict:
  """Scores a split with `clrs.evaluate` (pooled over the whole split), for
  every model: `predict_fn(params, batch)` -> (hard output arrays, aux).
  'scores' holds clrs.evaluate's per-output scores too; a Reasoner `model`
  adds its own keys (`Reasoner.summarise`). `done`: the host (outputs, aux)
  of the split's first batches, predicted by an earlier pass over the same
  batches (a size's probe, `extra_tests.score_within`); those are not
  predicted again, and the list is extended with the others'."""
  done = [] if done is None else done
  for batch in evalset.batches[len(done):]:
    out, aux = predict_fn(params, batch)
    done.append((jax.device_get(out),
                 None if model is None else jax.device_get(aux)))
  preds = [out for out, _ in done[:len(evalset.batches)]]
  auxes = [aux for _, aux in done[:len(evalset.batches)]]
  n = evalset.num_samples
  preds = {k: np.concatenate([p[k] for p in preds])[:n] for k in preds[0]}
  clrs = clrs_lib.clrs()
  scores = clrs.evaluate(clrs_lib.datapoints(evalset.outputs, evalset.spec),
                         {dp.name: dp for dp in
                          clrs_lib.datapoints(preds, evalset.spec)})
  result = {'score': float(scores['score']),
            'scores': {k: float(v) for k, v in scores.items()}}
  if per_graph:  # the tests' intervals over graphs; validation needs none
    result['graph_scores'] = graph_scores(evalset, preds)
  if model is not None:  # its own keys (solver statistics, termination)
    result.update(model.summarise(auxes, evalset))
  return result


# Keys that change how a run executes, not what it computes: they may differ
# on any rerun of a run folder.
EXECUTION_KEYS = ('train.data_parallel', 'data.cache_dir')
# Keys that change only how a trained model is tested (the test split, the
# fixed-point checks after it, the model's test-only settings: Reasoner.
# for_test), never the model nor its validation: a finished run folder may be
# tested again with other values (--reevaluate), and its results.json then
# records them under 'reevaluated_with' ({key: [value that trained, now]}).
EVALUATION_KEYS = ('data.test_length', 'data.test_num_samples',
                   'data.extra_test_lengths', 'data.extra_test_num_samples',
                   'data.extra_test_max_seconds',
                   'dear.diagnostics', 'dear.check_tol', 'dear.check_max_iter',
                   'dear.check_graphs', 'model.test_aggregation',
                   'model.adaptive_temperature')


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _comparable(config_dict: dict) -> dict:
  """A stored config as today's, JSON-normalised, EXECUTION_KEYS left out."""
  d = upgrade_stored_config(
      json.loads(json.dumps(config_dict, sort_keys=True, default=float)))
  for key in EXECUTION_KEYS:
    section, name = key.split('.')
    d.get(section, {}).pop(name, None)
  return d


def config_changes(old: dict, new: dict) -> dict:
  """{'section.key': [stored value, new value]} of the keys that differ
  between two stored configs; keys one of them predates are not compared."""
  old, new = _flat(_comparable(old)), _flat(_comparable(new))
  return {k: [old[k], new[k]] for k in sorted(set(old) & set(new))
          if old[k] != new[k]}


def _as_flag(key: str, value) -> str:
  """The flag that sets `key` to `value`, as the command line takes it."""
  if isinstance(value, list):
    value = '(' + ','.join(map(str, value)) + ',)'
  return f'--config.{key}={value}'


def _has_checkpoint(workdir: str) -> bool:
  folder = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


def _check_folder(config, workdir: str, reevaluate: bool, extend: bool,
                  progress: bool):
  """What WORKDIR holds, against `config`: (its stored results when it is
  finished and nothing is to be done, else None; the config.json to write
  before training, or None; notes for the new results.json).

  A run folder belongs to the config that started it (WORKDIR/config.json;
  results.json's for folders of earlier versions): a key that changes the
  model, the data or training is a RunError naming the flags that resume it
  as it was. More train.steps needs `extend`; other EVALUATION_KEYS on a
  finished folder need `reevaluate`. A folder of an earlier version with
  checkpoints but neither file resumes unchecked, as it always did."""
  new = config_to_store(config, workdir)
  hint = ('move it away (the run resumes from its last checkpoint) or use '
          'another --workdir')
  done = read_json(os.path.join(workdir, 'results.json'), REQUIRED_KEYS, hint)
  started = read_json(os.path.join(workdir, 'config.json'), ('config',), hint)
  if started is None and done is None:
    unknown = _has_checkpoint(workdir)
    return None, None if unknown else dict(config=new, extended_from=[]), {}
  stored = started['config'] if started else done['config']
  record = dict(config=new, extended_from=list(
      (started or done).get('extended_from', [])))
  changes = config_changes(stored, new)
  steps = changes.pop('train.steps', None)
  training = {k: v for k, v in changes.items() if k not in EVALUATION_KEYS}
  if training:
    listing = ', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in training.items())
    flags = ' '.join(_as_flag(k, a) for k, (a, _) in training.items())
    raise RunError(f'{workdir} holds a run of another config ({listing}); '
                   f'to resume it as it was drop these overrides or pass '
                   f'{flags}, or use another --workdir')
  if steps:
    old, now = steps
    if now < old:
      raise RunError(f'{workdir} holds a run of {old} steps, which cannot be '
                     f'shortened to {now}: --train_steps={old} resumes it, or '
                     'use another --workdir')
    if not extend:
      raise RunError(f'{workdir} holds a run of {old} steps: pass --extend to '
                     f'train it on to {now} steps, or --train_steps={old} to '
                     'resume it as it was')
    print(f'extending from {old} to {now} steps ({workdir})')
    record['extended_from'].append(old)
  notes = dict(extended_from=record['extended_from']) if record[
      'extended_from'] else {}
  if done is not None and done['train_steps'] == int(config.train.steps):
    tested = {k: v for k, v in config_changes(done['config'], new).items()
              if k in EVALUATION_KEYS}
    if not reevaluate:
      if tested:
        listing = ', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in
                            tested.items())
        raise RunError(f'{workdir} holds results tested with other settings '
                       f'({listing}); pass --reevaluate to test its best '
                       'parameters again with these, or drop the overrides')
      if progress:
        print(f'already finished: {os.path.join(workdir, "results.json")} '
              '(--reevaluate scores it again)')
      return done, None, {}
    was = dict(done.get('reevaluated_with', {}))
    for k, (a, b) in tested.items():
      was[k] = [was.get(k, [a])[0], b]
    was = {k: v for k, v in was.items() if v[0] != v[1]}
    if was:
      notes['reevaluated_with'] = was
  return None, None if record == started else record, notes


def _write_json(path: str, d: dict) -> None:
  """Atomic: a crash never leaves half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(d, f, indent=2, sort_keys=True, default=float)
  os.replace(tmp, path)


def out_of_memory(e: BaseException) -> str | None:
  """One line for a run that ran out of memory (XLA's RESOURCE_EXHAUSTED, a
  MemoryError): what to reduce; None for any other error."""
  first = (str(e).strip().splitlines() or [''])[0]
  if not (isinstance(e, MemoryError) or first.startswith('RESOURCE_EXHAUSTED')):
    return None
  return (f'out of memory ({first[:160] or type(e).__name__}); reduce '
          'data.batch_size or model.hidden (in a new --workdir), or the test '
          'split (data.test_length, data.test_num_samples, '
          'data.eval_batch_size)')


def train_and_evaluate(config, workdir: str, algorithm: str,
                       progress: bool = True, reevaluate: bool = False,
                       label: str | None = None, extend: bool = False) -> dict:
  """Trains `config.model_kind` on `algorithm`; writes WORKDIR/results.json.

  A workdir with checkpoints resumes from the latest one; a finished one
  (results.json of the same steps) returns its results without work unless
  `reevaluate`. A workdir started with another config is refused
  (`_check_folder`); more steps need `extend`."""
  return train_seeds(config, [config.train.seed], [workdir], algorithm,
                     progress, reevaluate, label, extend)[0]


def train_seeds(config, seeds, workdirs, algorithm: str, progress: bool = True,
                reevaluate: bool = False, label: str | None = None,
                extend: bool = False) -> list:
  """Trains the seeds together (one vmapped step, `dear_jax/seeds.py`), each
  into its own workdir exactly as `train_and_evaluate` would; their results.

  Finished workdirs are answered from results.json and left out of the stack.
  A seed whose loss diverges leaves the stack; the others finish, then the
  divergence is raised."""
  run = run_config.check_config(config)  # typed once, unless it already is
  run_config.check_pad_nodes(run, clrs_lib.processed_spec(algorithm))
  configs = [run.with_seed(s) for s in seeds]
  checked = [_check_folder(c, w, reevaluate, extend, progress)
             for c, w in zip(configs, workdirs)]
  results = [done for done, _, _ in checked]
  todo = [i for i, r in enumerate(results) if r is None]
  if todo:
    for i in todo:
      record = checked[i][1]
      if record is not None:
        os.makedirs(workdirs[i], exist_ok=True)
        _write_json(os.path.join(workdirs[i], 'config.json'), record)
    try:
      trained = _train([configs[i] for i in todo],
                       [workdirs[i] for i in todo], algorithm, progress, label)
    except Exception as e:  # pylint: disable=broad-except
      message = out_of_memory(e)
      if message is None:
        raise
      raise RunError(message) from e
    for i, r in zip(todo, trained):
      notes = checked[i][2]
      if notes:  # the notes of an extended or re-tested run
        r.update(notes)
        write_results(workdirs[i], r)
      results[i] = r
  return results


class FlaxLearner(loop.Learner):
  """The Flax models for `dear_jax.loop`: seeds stacked in one vmapped step
  (`seeds.SeedStack`), orbax checkpoints, resume."""

  def __init__(self, config, spec: dict, label: str | None = None):
    self.config, self.spec = config, spec
    self.name = label or factory.model_label(config)
    self.model = config.model_kind
    self.net = self.predict = self.stack = None
    self.test_net = self.test_predict = None

  def start(self, runs: list, progress: bool) -> None:
    config = self.config
    first = runs[0]
    net, train_step, params, opt_state = setup(
        config, self.spec, first.val_set.batches[0],
        jax.random.fold_in(jax.random.PRNGKey(first.seed), 0))
    self.net, self.predict = net, jax.jit(net.predict)
    # The tests (evaluate with per_graph: the official test and the extra
    # sizes) and DEAR's checks run the model's test settings; validation,
    # and so model selection, the model as trained.
    self.test_net = net.for_test()
    self.test_predict = (self.predict if self.test_net is net
                         else jax.jit(self.test_net.predict))
    optimizer = make_optimizer(config)
    states = []
    for j, run in enumerate(runs):
      if j:
        params = net.init(jax.random.fold_in(jax.random.PRNGKey(run.seed), 0),
                          run.val_set.batches[0])
        opt_state = optimizer.init(params)
      state = run.restore(dict(params=params, opt_state=opt_state,
                               best_params=params, data=run.stream.get_state()),
                          progress)
      states.append((state['params'], state['opt_state']))
    mesh = None
    if config.train.data_parallel:
      seeds_lib.check_divisible(config.data.batch_size)
      mesh = seeds_lib.data_mesh()
    self.stack = seeds_lib.SeedStack(states, [r.seed for r in runs],
                                     make_update(net, optimizer), train_step,
                                     mesh)

  def step(self, members, batches, steps):
    return self.stack.step(members, batches, steps)

  def state(self, j: int):
    # A copy of the parameters: the next step donates the stack's buffers,
    # and these may become the best parameters.
    params, opt_state = self.stack.get(j)
    return jax.tree.map(jnp.copy, params), opt_state

  def evaluate(self, params, evalset, per_graph: bool = False,
               done: list | None = None) -> dict:
    if per_graph:
      return evaluate(self.test_net, self.test_predict, params, evalset, True,
                      done)
    return evaluate(self.net, self.predict, params, evalset, done=done)

  def warm(self, params, batch):  # before each test only
    return self.test_predict(params, batch)

  def compile(self, params, batch) -> bool:
    self.test_predict.lower(params, batch).compile()  # cached by the jit
    return True

  def metrics(self, evaluation: dict) -> dict:
    return self.net.metrics(evaluation)

  def progress(self, aux) -> dict:
    return self.net.progress(aux)

  def results(self, results, run, best_params, test, test_set) -> None:
    config = run.config
    results.update(num_params=count_params(best_params),
                   config=config_to_store(config, run.workdir))
    for k, v in test.items():
      if k not in ('score', 'scores', 'graph_scores'):
        results[k] = v
    self.net.results(results, config, test_set)
    if config.model_kind == 'dear' and config.dear.diagnostics:
      checked = test_set.head(config.dear.check_graphs)
      results.update(diagnostics.checks(
          self.test_net, best_params, checked, evaluate,
          operating=test if checked is test_set else None,
          settings=diagnostics.CheckSettings(
              ref_tol=config.dear.check_tol,
              ref_cap=config.dear.check_max_iter)))


def _train(configs, workdirs, algorithm: str, progress: bool,
           label: str | None = None) -> list:
  """`loop.train` with a FlaxLearner on the unfinished seeds."""
  config = configs[0]  # the seeds differ in train.seed only
  dcfg = config.data
  hints = factory.uses_hints(config)
  test_set = splits.load_split(algorithm, 'test', dcfg, keep_hints=hints)
  runs = [loop.Run(w, c.train.seed, algorithm, dcfg, hints, test_set.key,
                   config=c) for c, w in zip(configs, workdirs)]
  learner = FlaxLearner(config, clrs_lib.processed_spec(algorithm), label)
  return loop.train(learner, runs, int(config.train.steps),
                    int(config.train.eval_every), test_set, algorithm,
                    progress)


__all__ = ['train_and_evaluate', 'train_seeds', 'evaluate', 'RunError',
           'summary_table']
