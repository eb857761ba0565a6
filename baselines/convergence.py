"""Residual against f evaluations for a trained DEAR run (the plot's data)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os


def trace(workdir: str) -> dict:
  """Residual after each f evaluation on the first test batch of a finished
  DEAR run: the run's own solver and plain iteration h <- f(h) on the same
  map, both to the run's evaluation cap, past its tolerance."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dear_jax import batches as batch_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib, splits  # pylint: disable=g-import-not-at-top
  from dear_jax import checkpoints, factory, solver, train  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  config = train.stored_config(results['config'], workdir)
  algorithm = results['algorithm']
  test = splits.load_split(algorithm, 'test', train.data_config(config),
                           keep_hints=False)
  batch = test.batches[0]
  # as the run was tested (model.test_aggregation, adaptive temperature)
  model = factory.build_model(config, clrs_lib.processed_spec(algorithm),
                              batch).for_test()
  params = checkpoints.load_best_params(workdir)
  cap = model.solver_cfg.max_iter_eval
  picard = dataclasses.replace(model.solver_cfg, method='fixed_point',
                               damping=1.0)

  @functools.partial(jax.jit, static_argnums=2)
  def history(params, batch, cfg):
    f, h0, args = model.equilibrium(params, batch, training=False, key=None)
    return solver.residual_history(f, h0, params['processor'], args,
                                   config=cfg, evaluations=cap)

  curves = {name: np.asarray(history(params, batch, cfg))[:test.num_samples]
            for name, cfg in (('solver', model.solver_cfg),
                              ('fixed_point', picard))}
  graphs = len(curves['solver'])
  return dict(run=workdir, algorithm=algorithm,
              method=model.solver_cfg.method, tol=model.solver_cfg.tol,
              tol_mode=model.solver_cfg.tol_mode, cap=cap, graphs=graphs,
              nodes=batch_lib.num_nodes(batch),
              curves={k: v.tolist() for k, v in curves.items()},
              # The run's own test iterations of these graphs.
              actual_iterations=results['solver_iterations'][:graphs])


def _source(out: str, run: dict) -> list:
  """What a cached trace was computed from: the run's folder under OUT and a
  hash of its results.json (stable across clones, unlike an mtime)."""
  with open(os.path.join(run['run_dir'], 'results.json'), 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  return [os.path.relpath(run['run_dir'], out), digest]


def _cached_entries(path: str) -> list:
  """The traces kept in OUT/plots/convergence.json ({"traces": [...]}; a
  file written before there was one trace per algorithm holds one trace)."""
  from dear_jax.results import read_json  # pylint: disable=g-import-not-at-top
  cached = read_json(path, hint='delete it (a cache, traced again)')
  if cached is None:
    return []
  return cached['traces'] if 'traces' in cached else [cached]


def cached_traces(out: str, runs: list) -> list:
  """One `trace` per algorithm, of its first finished dear run (lowest seed
  first), kept in OUT/plots/convergence.json until that run's results change.
  A run without checkpoints (a fresh clone keeps none: they are git-ignored)
  is passed over unless the cache already holds its trace; an algorithm
  with no run that qualifies has no trace."""
  path = os.path.join(out, 'plots', 'convergence.json')
  cached = _cached_entries(path)
  by_source = {tuple(t['source']): t for t in cached if 'source' in t}
  dear = sorted((r for r in runs if r['model'] == 'dear'),
                key=lambda r: (r['algorithm'], r['seed']))
  traces, done = [], set()
  for run in dear:
    if run['algorithm'] in done:
      continue
    source = _source(out, run)
    result = by_source.get(tuple(source))
    if result is None and os.path.isdir(os.path.join(run['run_dir'],
                                                     'checkpoints')):
      result = trace(run['run_dir'])
      result['run'], result['source'] = source[0], source
    if result is not None:
      traces.append(result)
      done.add(run['algorithm'])
  if traces and traces != cached:  # rewritten only when a trace changed
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump({'traces': traces}, f)
  return traces
