"""DIR/protocol.json: every setting that changes results, and its guard.

A second invocation on the same --out may add algorithms, models or seeds,
but any other difference (steps, data sizes, a model's config, the dm-clrs
version) fails with a one-line error before anything is written.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os

import filelock

from . import variants
from .plan import CompareError, Plan


def _model_protocol(plan: Plan, model: str) -> dict:
  if variants.official(model):
    from . import clrs_official  # pylint: disable=g-import-not-at-top
    d = dataclasses.asdict(plan.official_data)
    return dict(model=dict(clrs_official.RUN_PY_DEFAULTS),
                hint_mode=variants.VARIANTS[model].hint_mode, data=d)
  c = plan.configs[model].to_dict()
  c['train'].pop('seed')
  c['train'].pop('data_parallel', None)  # same results on any device count
  c['dear'].pop('align_teacher', None)  # set per run (the sweep's teacher)
  return c


def _data_protocol(algorithm: str, data_cfg) -> dict:
  """What data an algorithm's runs see (sizes and official counts resolved)."""
  from dear_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dear_jax import splits  # pylint: disable=g-import-not-at-top
  return dict(
      train_sizes=list(input_pipeline.training_sizes(algorithm,
                                                     data_cfg.train_sizes)),
      size_schedule=data_cfg.size_schedule, batch_size=data_cfg.batch_size,
      val_length=splits.validation_length(algorithm, data_cfg),
      val_num_samples=splits.split_size(algorithm, 'val', data_cfg),
      test_length=data_cfg.test_length,
      test_num_samples=splits.split_size(algorithm, 'test', data_cfg))


# Tests at further sizes after the official one (train.EVALUATION_KEYS'
# data.extra_test_*): like the checks, they change neither the model nor its
# n=64 test score, for every model.
AFTER_TRAINING_PREFIX = 'extra_test_'


def _without_checks(models: dict) -> dict:
  """`models` without the fixed-point checks after the test
  (dear_jax.train.EVALUATION_KEYS of the dear section): they change neither
  the model nor its test score, and each results.json records what it
  checked (fixed_point_reference; one fixed_point_distance per graph
  checked). A folder may mix them, e.g. checks on a subset for the
  2048-graph test sets. The test split itself stays in the protocol: a
  table compares scores on one test set."""
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  checks = [k.split('.', 1)[1] for k in train.EVALUATION_KEYS
            if k.startswith('dear.')]
  after = [k.split('.', 1)[1] for k in train.EVALUATION_KEYS
           if k.startswith('data.' + AFTER_TRAINING_PREFIX)]
  models = copy.deepcopy(models)
  for c in models.values():
    for k in checks:
      c.get('dear', {}).pop(k, None)
    for k in after:
      c.get('data', {}).pop(k, None)
  return models


def _strip_cache_dir(d: dict) -> dict:
  d = copy.deepcopy(d)
  d.get('data', {}).pop('cache_dir', None)
  return d


def build(plan: Plan) -> dict:
  """Everything that changes results; JSON-normalised (tuples -> lists)."""
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  clrs = clrs_lib.clrs()
  data_cfgs = {m: (plan.official_data if variants.official(m)
                   else train.data_config(plan.configs[m]))
               for m in plan.models}
  proto = dict(
      train_steps=plan.train_steps, eval_every=plan.eval_every,
      data_protocol_version=clrs_lib.PROTOCOL_VERSION,
      clrs_version=getattr(clrs, '__version__', 'unknown'),
      models={m: _strip_cache_dir(_model_protocol(plan, m))
              for m in plan.models},
      algorithms={a: {m: _data_protocol(a, data_cfgs[m]) for m in plan.models}
                  for a in plan.algorithms})
  return json.loads(json.dumps(proto))


def first_difference(old, new, path=''):
  """Path of the first difference between two JSON values on shared keys."""
  if isinstance(old, dict) and isinstance(new, dict):
    # Plain values first: the message then names train_steps, not the copy
    # of it inside each model's config.
    keys = sorted(set(old) | set(new),
                  key=lambda k: (isinstance(old.get(k, new.get(k)), dict), k))
    for k in keys:
      if k not in old or k not in new:
        # New algorithms/models may be added to a DIR; other keys may not.
        if path in ('algorithms', 'models') or (
            path.startswith('algorithms.') and path.count('.') == 1):
          continue
        return (f'{path}.{k}' if path else k) + ' (present in only one)'
      d = first_difference(old[k], new[k], f'{path}.{k}' if path else k)
      if d:
        return d
    return None
  if old != new:
    return f'{path}: {old!r} there, {new!r} now'
  return None


def hardware_lines(info: dict) -> list:
  """protocol.json info's machines, oldest first (a single string before
  every machine was kept)."""
  hardware = info.get('hardware', [])
  return [hardware] if isinstance(hardware, str) else list(hardware)


def _resume_hint(old: dict, diff: str) -> str:
  """When a model's config value differs (a default changed since DIR was
  written), the flag that resumes DIR as it was; '' otherwise."""
  path = diff.split(':')[0].split('.')
  if len(path) != 4 or path[0] != 'models':
    return ''
  _, model, section, key = path
  value = old['protocol']['models'][model].get(section, {}).get(key)
  if isinstance(value, (dict, list)) or value is None:
    return ''
  return f', or pass --config.{section}.{key}={value} to resume it'


@contextlib.contextmanager
def locked(out: str):
  """Holds DIR/protocol.json.lock: sweeps started on one DIR at once (one
  per core) read, merge and write protocol.json, and the reports, one after
  the other."""
  os.makedirs(out, exist_ok=True)
  with filelock.FileLock(os.path.join(out, 'protocol.json.lock')):
    yield


def check_and_write(plan: Plan, protocol: dict, info: dict) -> None:
  """Fails if DIR was used with other results-changing settings."""
  with locked(plan.out):
    _check_and_write(plan, protocol, info)


def _check_and_write(plan: Plan, protocol: dict, info: dict) -> None:
  path = os.path.join(plan.out, 'protocol.json')
  merged = protocol
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
      old['protocol']['models'], old['protocol']['algorithms']  # pylint: disable=pointless-statement
    except (ValueError, KeyError, TypeError) as e:
      raise CompareError(f'{path} is unreadable ({type(e).__name__}); '
                         'use another --out') from None
    from dear_jax import train  # pylint: disable=g-import-not-at-top
    old['protocol']['models'] = {  # clrs_official's are run.py's settings
        m: c if m == 'clrs_official' else train.upgrade_stored_config(c)
        for m, c in old['protocol']['models'].items()}
    diff = first_difference(
        dict(old['protocol'], models=_without_checks(old['protocol']['models'])),
        dict(protocol, models=_without_checks(protocol['models'])))
    if diff:
      raise CompareError(f'{plan.out} holds runs of another protocol ({diff})'
                         f'; use another --out{_resume_hint(old, diff)}')
    merged = copy.deepcopy(old['protocol'])
    merged['models'].update(protocol['models'])
    for a, per_model in protocol['algorithms'].items():
      merged['algorithms'].setdefault(a, {}).update(per_model)
    old_info = old.get('info', {})
    for key in ('algorithms', 'models', 'seeds'):
      info[key] = sorted(set(old_info.get(key, [])) | set(info[key]),
                         key=str)
    info['presets'] = sorted(set(old_info.get('presets', [])) |
                             set(info['presets']))
    # every machine that has trained here (one string before this was a list)
    seen = hardware_lines(old_info)
    info['hardware'] = seen + [h for h in hardware_lines(info)
                               if h not in seen]
  tmp = path + '.tmp'  # one writer at a time (locked); renamed into place
  with open(tmp, 'w') as f:
    json.dump(dict(protocol=merged, info=info), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
