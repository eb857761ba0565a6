"""Trained models kept in the repository, evaluated without training.

A stored model is a folder holding the best-by-validation parameters of one
finished run (`params.npz`: float32 arrays, compressed, keyed by their path
in the parameter tree), the run's config (`config.json`, as results.json
stores it) and `model.json` (algorithm, name, seed, the run's own scores and
the checksum of params.npz). Nothing else of the run is kept: no optimiser
state, no checkpoints. A finished run folder evaluates the same way (its
best parameters); a study tests its runs at a further size with
`--json=RUN/tests/nN.json`, which the reports read beside results.json.

    python -m dear_jax.pretrained --model=pretrained/bfs/dear --n=256
    python -m dear_jax.pretrained --model=pretrained/bfs/dear --split=val
    python -m dear_jax.pretrained --model=RUN --n=512 --json=RUN/tests/n512.json
    python -m dear_jax.pretrained --store=RUN --model=FOLDER --name=dear

Test sets of any size are drawn as the official test split is (its sampler
and seed), so every model is scored on the same graphs; n=64 with no
--graphs is the official split itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys

import numpy as np

from dear_jax import checkpoints
from dear_jax import clrs_lib
from dear_jax import results as results_lib
from dear_jax import validation

PARAMS, CONFIG, MODEL = 'params.npz', 'config.json', 'model.json'
_SEP = '/'


class StoredModelError(checkpoints.RunError):
  """A stored model folder that cannot be read as one (one line, exit 2)."""


def _leaves(tree, prefix: str = '') -> dict:
  """{'module/.../name': leaf} of a nested parameter dict."""
  out = {}
  for k, v in tree.items():
    path = f'{prefix}{_SEP}{k}' if prefix else str(k)
    if hasattr(v, 'items'):
      out.update(_leaves(v, path))
    else:
      out[path] = v
  return out


def _flatten(tree) -> dict:
  return {k: np.asarray(v, dtype=np.float32) for k, v in _leaves(tree).items()}


def _unflatten(flat: dict) -> dict:
  tree = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split(_SEP)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def store(workdir: str, dest: str, name: str) -> dict:
  """Keeps a finished run's best parameters and config in `dest`; returns
  model.json's content."""
  results = results_lib.read_json(
      os.path.join(workdir, 'results.json'),
      required=('config', 'algorithm', 'seed', 'train_steps', 'val_score',
                'test_score'))
  if results is None:
    raise StoredModelError(f'{workdir} has no results.json: only a finished '
                           'run can be stored')
  params = checkpoints.load_best_params(workdir)
  flat = _flatten(params)
  os.makedirs(dest, exist_ok=True)
  np.savez_compressed(os.path.join(dest, PARAMS), **flat)
  with open(os.path.join(dest, CONFIG), 'w') as f:
    json.dump(results['config'], f, indent=2, sort_keys=True)
  meta = dict(
      name=name, algorithm=results['algorithm'], seed=results['seed'],
      best_step=results.get('best_step'), train_steps=results['train_steps'],
      val_score=results['val_score'], test_score=results['test_score'],
      test_nodes=results.get('test_nodes'), num_params=int(
          sum(v.size for v in flat.values())),
      extra_test_scores={n: e['score'] for n, e in
                         results.get('extra_tests', {}).items()},
      params_sha256=_sha256(os.path.join(dest, PARAMS)))
  with open(os.path.join(dest, MODEL), 'w') as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write('\n')
  return meta


def is_run_folder(folder: str) -> bool:
  """A finished training run (results.json and its checkpoints)."""
  return (os.path.isfile(os.path.join(folder, 'results.json')) and
          os.path.isdir(os.path.join(folder, 'checkpoints')))


def load(folder: str):
  """(model.json's content, the run's config as a ConfigDict, parameters) of
  a stored model, or of a finished run folder (its best parameters); one-line
  StoredModelError when the folder is neither."""
  from dear_jax import factory  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  if is_run_folder(folder) and not os.path.isfile(os.path.join(folder, MODEL)):
    results = results_lib.read_json(os.path.join(folder, 'results.json'),
                                    required=('config', 'algorithm', 'seed'))
    config = train.stored_config(results['config'], folder)
    seed_dir = os.path.basename(os.path.normpath(folder))
    name = (os.path.basename(os.path.dirname(os.path.normpath(folder)))
            if seed_dir == f's{results["seed"]}'  # compare's runs/ALG/MODEL/sS
            else factory.model_label(config))
    meta = dict(name=name, algorithm=results['algorithm'],
                seed=results['seed'])
    params = checkpoints.load_best_params(folder)
  else:
    missing = [f for f in (PARAMS, CONFIG, MODEL)
               if not os.path.isfile(os.path.join(folder, f))]
    if missing:
      raise StoredModelError(
          f'{folder} is neither a stored model (missing {", ".join(missing)}) '
          'nor a finished run folder (results.json and checkpoints/)')
    meta = results_lib.read_json(os.path.join(folder, MODEL))
    config_dict = results_lib.read_json(os.path.join(folder, CONFIG))
    if _sha256(os.path.join(folder, PARAMS)) != meta.get('params_sha256'):
      raise StoredModelError(
          f'{os.path.join(folder, PARAMS)} does not match the checksum in '
          f'{MODEL}: the file is damaged or was replaced; restore it from git')
    with np.load(os.path.join(folder, PARAMS), allow_pickle=False) as z:
      params = _unflatten({k: z[k] for k in z.files})
    config = train.stored_config(config_dict)
  # The alignment teacher is used in training only.
  config.dear.align_weight = 0.0
  config.dear.align_teacher = None
  return meta, config, params


class _Learner:
  """The parts of a dear_jax.loop.Learner that evaluation uses."""

  def __init__(self, net):
    import jax  # pylint: disable=g-import-not-at-top
    self.net, self.predict = net, jax.jit(net.predict)

  def warm(self, params, batch):
    return self.predict(params, batch)

  def compile(self, params, batch) -> bool:
    self.predict.lower(params, batch).compile()  # cached by the jit
    return True

  def evaluate(self, params, evalset, per_graph: bool = False,
               done: list | None = None) -> dict:
    from dear_jax import train  # pylint: disable=g-import-not-at-top
    return train.evaluate(self.net, self.predict, params, evalset, per_graph,
                          done)


def _check_shapes(net, params, batch) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  expected = _leaves(jax.eval_shape(net.init, jax.random.PRNGKey(0), batch))
  got = _leaves(params)
  if set(expected) != set(got) or any(
      expected[k].shape != got[k].shape for k in expected):
    diff = sorted(set(expected) ^ set(got)) or sorted(
        k for k in expected if expected[k].shape != got[k].shape)
    raise StoredModelError(
        f'the stored parameters do not fit the model their config builds '
        f'(first difference: {diff[0]}); the model code changed since they '
        'were stored')


def evaluate(folder: str, split: str = 'test', n: int | None = None,
             graphs: int | None = None, cache_dir: str | None = None,
             max_seconds: float | None = None) -> dict:
  """Scores a stored model (or a finished run's best parameters) on its
  algorithm's validation split, or on a test split of `n` nodes and `graphs`
  graphs (default: the official test), as the run scored its own tests
  (`extra_tests.score_set`); with `max_seconds`, on the first of those
  graphs that fit it, as timed on the first two (`extra_tests.score_within`)."""
  from dear_jax import extra_tests  # pylint: disable=g-import-not-at-top
  from dear_jax import factory  # pylint: disable=g-import-not-at-top
  from dear_jax import profiling  # pylint: disable=g-import-not-at-top
  from dear_jax import splits  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  meta, config, params = load(folder)
  if cache_dir:
    config.data.cache_dir = cache_dir
  algorithm = meta['algorithm']
  dcfg = train.data_config(config)
  hints = factory.uses_hints(config)
  if split == 'val':
    evalset = splits.load_split(algorithm, 'val', dcfg, int(meta['seed']),
                                keep_hints=hints)
  elif graphs is None and n in (None, dcfg.test_length):
    evalset = splits.load_split(algorithm, 'test', dcfg, keep_hints=hints)
  else:
    dcfg = dataclasses.replace(
        dcfg, extra_test_num_samples=int(graphs or dcfg.extra_test_num_samples))
    evalset = splits.load_extra_test(algorithm, int(n or dcfg.test_length),
                                     dcfg, hints)
  net = factory.build_model(config, clrs_lib.processed_spec(algorithm),
                            evalset.batches[0])
  _check_shapes(net, params, evalset.batches[0])
  if split == 'test':  # the run's test settings; validation never had them
    net = net.for_test()
  entry = extra_tests.score_within(
      _Learner(net), params, evalset, max_seconds)
  return dict(model=meta['name'], algorithm=algorithm, seed=meta['seed'],
              split=split,
              hardware=profiling.hardware_line(), **entry)


def index_text(root: str) -> str:
  """root/README.md: one row per stored model (from its model.json)."""
  rows = []
  for dirpath, _, files in sorted(os.walk(root)):
    if MODEL in files:
      m = results_lib.read_json(os.path.join(dirpath, MODEL))
      extra = ', '.join(f'n={n}: {100 * v:.1f}' for n, v in
                        sorted(m['extra_test_scores'].items(),
                               key=lambda kv: int(kv[0])))
      size = os.path.getsize(os.path.join(dirpath, PARAMS))
      rows.append(f'| {m["algorithm"]} | {m["name"]} | {m["seed"]} | '
                  f'{m["best_step"]} of {m["train_steps"]} | '
                  f'{100 * m["val_score"]:.1f} | {100 * m["test_score"]:.1f} | '
                  f'{extra or "-"} | {m["num_params"]:,} | {size / 1e6:.2f} MB |')
  return '\n'.join([
      '# Stored models', '',
      'Best-by-validation parameters of finished study runs (parameters '
      'only), written by `python -m dear_jax.pretrained --store=RUN '
      '--model=FOLDER --name=NAME`. Evaluate one on any test size:', '',
      '    python -m dear_jax.pretrained --model=pretrained/minimum/dear '
      '--n=256 --graphs=16', '',
      'Scores are the run\'s own (percent; test at n=64 on the official '
      'split, larger sizes on the study\'s graphs). This table is generated: '
      '`python -m dear_jax.pretrained --index=pretrained`.', '',
      '| algorithm | model | seed | best step | validation | test (n=64) | '
      'larger n | parameters | params.npz |',
      '|---|---|---|---|---|---|---|---|---|', *rows, ''])


def _spread(graph_scores) -> str:
  """The graphs' mean with its 95 % t interval, cut to [0, 1] (a score's
  range); where every graph scored the same, that fact instead of an
  interval of width 0 (the studies' tables, baselines/stats.py, give an
  exact binomial bound there)."""
  g = np.asarray(graph_scores, float)
  if g.size < 2:
    return ''
  if np.all(g == g[0]):
    return f' (every graph scored {g[0]:.4f})'
  from scipy import stats  # pylint: disable=g-import-not-at-top
  half = stats.t.ppf(0.975, g.size - 1) * g.std(ddof=1) / np.sqrt(g.size)
  low, high = max(g.mean() - half, 0.0), min(g.mean() + half, 1.0)
  return (f' (graphs: mean {g.mean():.4f}, 95 % t interval '
          f'[{low:.4f}, {high:.4f}])')


def _line(r: dict) -> str:
  spread = _spread(r['graph_scores'])
  extra = ''
  if 'solver_iters_mean' in r:
    extra = (f'; solver {r["solver_iters_mean"]:.1f} iterations, '
             f'{100 * r["nonconverged_fraction"]:.1f} % not converged')
  graphs = (f'the first {r["graphs"]} of {r["graphs_planned"]} graphs (the '
            'time limit)' if 'graphs_planned' in r else f'{r["graphs"]} graphs')
  return (f'{r["model"]} on {r["algorithm"]} {r["split"]} n={r["nodes"]}, '
          f'{graphs}: score {r["score"]:.4f}{spread}{extra}; '
          f'{r["eval_seconds_per_graph"]:.3f} s per graph')


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog='python -m dear_jax.pretrained',
      description='Evaluate a stored model, or store a finished run.')
  parser.add_argument('--index', default=None, metavar='ROOT',
                      help='write ROOT/README.md, the table of the stored '
                      'models under ROOT, and exit')
  parser.add_argument('--model', default=None,
                      help='stored model folder (e.g. pretrained/bfs/dear), '
                      'or a finished run folder (its best parameters)')
  parser.add_argument('--split', default='test', choices=('test', 'val'))
  parser.add_argument('--n', type=int, default=None,
                      help='test graph size (default: the official 64)')
  parser.add_argument('--graphs', type=int, default=None,
                      help='test graphs (default: the official count at '
                      'n=64, else the run\'s data.extra_test_num_samples)')
  parser.add_argument('--max_seconds', type=float, default=None,
                      help='score only the first of the --graphs that fit '
                      'this many seconds, as timed on the first 2 (at least '
                      '2)')
  parser.add_argument('--cache_dir', default=None,
                      help='dataset cache (default: the run\'s)')
  parser.add_argument('--json', default=None,
                      help='also write the result to this file')
  parser.add_argument('--store', default=None, metavar='RUN_FOLDER',
                      help='store this finished run in --model instead')
  parser.add_argument('--name', default=None,
                      help='with --store: the model\'s name (e.g. dear)')
  args = parser.parse_args(argv)
  if args.index:
    text = index_text(args.index)
    with open(os.path.join(args.index, 'README.md'), 'w') as f:
      f.write(text)
    return 0
  try:
    if not args.model:
      raise StoredModelError('--model is required: a stored model folder '
                             '(e.g. pretrained/minimum/dear)')
    if args.store:
      if not args.name:
        raise StoredModelError('--store needs --name (the model\'s name, '
                               'e.g. dear or dear_paper)')
      if os.path.exists(os.path.join(args.model, MODEL)):
        raise StoredModelError(f'{args.model} already holds a stored model; '
                               'remove it first or choose another --model')
      meta = store(args.store, args.model, args.name)
      print(f'stored {meta["name"]} ({meta["algorithm"]}, seed '
            f'{meta["seed"]}, {meta["num_params"]} parameters) in {args.model}')
      return 0
    for flag, value in (('--n', args.n), ('--graphs', args.graphs)):
      if value is not None and value < 1:
        raise StoredModelError(f'{flag} must be a positive integer, got '
                               f'{value}')
    if args.split == 'val' and (args.n or args.graphs or args.max_seconds):
      raise StoredModelError('--n, --graphs and --max_seconds apply to '
                             '--split=test; the validation split has its '
                             'run\'s size and count')
    if args.max_seconds is not None and not args.max_seconds > 0:
      raise StoredModelError(f'--max_seconds must be a positive number of '
                             f'seconds, got {args.max_seconds}')
    if args.json:
      validation.check_writable_dir(os.path.dirname(os.path.abspath(args.json)),
                                    '--json')
    r = evaluate(args.model, args.split, args.n, args.graphs, args.cache_dir,
                 args.max_seconds)
  except (checkpoints.RunError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(_line(r))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json + '.tmp', 'w') as f:
      json.dump(r, f, indent=2)
      f.write('\n')
    os.replace(args.json + '.tmp', args.json)
  return 0


if __name__ == '__main__':
  sys.exit(main())
