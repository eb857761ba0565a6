"""dm-clrs's own Triplet-GMPNN `BaselineModel`, trained on dear_jax's data.

This is the reference point for the Flax port and for DEAR: the official haiku
model with every `clrs/examples/run.py` default passed explicitly, fed exactly
the batches dear_jax trains and evaluates on (`dear_jax.input_pipeline`,
`dear_jax.splits`), scored with `clrs.evaluate` the way run.py's
`collect_and_eval` does (pooled over the whole split), and reported in the
common results.json schema (`dear_jax.results`).

It trains in `dear_jax.loop`, the loop of every model, through
`OfficialLearner` (build, update, predict): the same validation schedule,
best-parameter selection, loss curve, timing and scoring as the Flax models.

Differences from run.py: training hints are zero-padded in time to
`dear_jax.batches.time_bucket` (the model runs T_padded - 1 steps; outputs
are frozen per sample at its true length, so only the cost changes), the
splits are dear_jax's cached ones, and validation follows dear_jax.loop:
before the first update, after every eval_every updates and after the last
(run.py validates after updates 1, eval_every + 1, ...). A new best needs a
strictly higher validation score; the test uses the best validation
parameters. run.py pickles the best parameters; here the loop's orbax
checkpoints keep them, with the model and optimiser state, the data stream
and the key chains, so an interrupted run resumes where it stopped.

CLI (argparse, because `import clrs` defines absl flags such as `seeds`):

    python -m baselines.clrs_official --algorithm=bfs --train_steps=100 \
        --seed=0 --hint_mode=encoded_decoded --out=runs/official_bfs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import numpy as np

from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import compile_cache
from dear_jax import input_pipeline
from dear_jax import loop
from dear_jax import nar
from dear_jax import seeds as seeds_lib
from dear_jax import sections
from dear_jax import splits
from dear_jax import train as train_lib
from dear_jax.model import count_params
from dear_jax import results as results_lib

MODEL_NAME = 'clrs_official'

# Every clrs/examples/run.py default that reaches the model (batch size and the
# data protocol come from the DataConfig).
RUN_PY_DEFAULTS = dict(
    processor_type='triplet_gmpnn',
    use_ln=True,
    nb_triplet_fts=8,
    nb_heads=1,
    hidden_dim=128,
    encoder_init='xavier_on_scalars',
    use_lstm=False,
    learning_rate=1e-3,
    grad_clip_max_norm=1.0,
    freeze_processor=False,
    dropout_prob=0.0,
    hint_teacher_forcing=0.0,
    hint_repred_mode='soft',
    nb_msg_passing_steps=1,
)


def _check_settings(train_steps: int, hint_mode: str, eval_every: int,
                    prefix: str = '') -> None:
  """prefix: '--' where the values came from the command line."""
  sections.int_at_least(f'{prefix}train_steps', train_steps, 1)
  nar.hint_flags(hint_mode, f'{prefix}hint_mode')
  sections.int_at_least(f'{prefix}eval_every', eval_every, 1)


def check_args(algorithm: str, train_steps: int, hint_mode: str,
               eval_every: int) -> None:
  """Raises ValueError (one-line message) on bad arguments."""
  _check_settings(train_steps, hint_mode, eval_every)
  clrs_lib.check_algorithm(algorithm)  # Last: it imports dm-clrs (~5 s).


def check_single_device() -> None:
  """BaselineModel's multi-device path (pmap) calls APIs removed in jax 0.10."""
  n = jax.local_device_count()
  if n > 1:
    raise RuntimeError(
        f'clrs BaselineModel needs exactly one local device, found {n} '
        f'({jax.local_devices()[0].platform}); its multi-device path calls '
        f'jax.device_put_replicated, removed in jax >= 0.10. Restrict to one '
        f'device, e.g. CUDA_VISIBLE_DEVICES=0.')


def build_model(spec: dict, dummy_feedback, *,
                hint_mode: str = 'encoded_decoded',
                checkpoint_path: str | None = None, **overrides):
  """A `clrs.models.BaselineModel` with run.py's defaults (not yet init'ed)."""
  clrs = clrs_lib.clrs()
  cfg = dict(RUN_PY_DEFAULTS, **overrides)
  encode_hints, decode_hints = nar.hint_flags(hint_mode, 'hint_mode')
  processor_factory = clrs.get_processor_factory(
      cfg['processor_type'], use_ln=cfg['use_ln'],
      nb_triplet_fts=cfg['nb_triplet_fts'], nb_heads=cfg['nb_heads'])
  return clrs.models.BaselineModel(
      spec=spec,
      dummy_trajectory=dummy_feedback,
      processor_factory=processor_factory,
      hidden_dim=cfg['hidden_dim'],
      encode_hints=encode_hints,
      decode_hints=decode_hints,
      encoder_init=cfg['encoder_init'],
      use_lstm=cfg['use_lstm'],
      learning_rate=cfg['learning_rate'],
      grad_clip_max_norm=cfg['grad_clip_max_norm'],
      checkpoint_path=(os.path.join(os.getcwd(), 'clrs_ckpt')
                       if checkpoint_path is None else checkpoint_path),
      freeze_processor=cfg['freeze_processor'],
      dropout_prob=cfg['dropout_prob'],
      hint_teacher_forcing=cfg['hint_teacher_forcing'],
      hint_repred_mode=cfg['hint_repred_mode'],
      nb_msg_passing_steps=cfg['nb_msg_passing_steps'])


# dm-clrs decodes an edge-level pointer (Floyd-Warshall's output Pi and hint
# Pi_h) through a (graphs, n, n, n, hidden) float32 tensor at every step: at the
# official test's n = 64, a batch of 32 graphs needs about 4 GiB for it, and
# the test of floyd_warshall was killed for memory on a 24 GB CPU machine.
# Prediction is per graph, so such batches are predicted in chunks whose
# tensor stays under this bound (the scores are the same; see tests).
PREDICT_CHUNK_BYTES = 2**30


def predict_chunk(spec: dict, batch: dict) -> int:
  """How many graphs of `batch` to predict at once."""
  graphs = int(batch['lengths'].shape[0])
  if not any(loc == 'edge' and type_ == 'pointer'
             for _, loc, type_ in spec.values()):
    return graphs
  per_graph = batch_lib.num_nodes(batch)**3 * RUN_PY_DEFAULTS['hidden_dim'] * 4
  return max(1, min(graphs, PREDICT_CHUNK_BYTES // per_graph))


def _host_copy(tree):
  # np.array copies: model.params and opt_state may be zero-copy views of
  # device buffers that the jitted update donates and overwrites.
  return jax.tree_util.tree_map(np.array, tree)


class OfficialLearner(loop.Learner):
  """BaselineModel for `dear_jax.loop`: a stack of one seed (its step is not
  vmappable), with the loop's orbax checkpoints, so an interrupted run
  resumes and ends as an uninterrupted one.

  Keys as run.py's: a RandomState(seed) draws the training key chain (each
  update splits it) and init uses seed + 1; predictions draw from a second
  chain, so validations do not change the training keys. Both chains are
  saved with each checkpoint (`checkpoint_meta`)."""

  name = model = MODEL_NAME

  def __init__(self, spec: dict, hint_mode: str, seed: int, workdir: str):
    self.spec, self.hint_mode, self.seed = spec, hint_mode, seed
    self.workdir, self.net = workdir, None
    self._compiles = seeds_lib.Compiles()  # the loop's rule, as the Flax models
    rng = np.random.RandomState(seed)
    self.train_key = jax.random.PRNGKey(rng.randint(2**32))
    self.eval_key = jax.random.PRNGKey(rng.randint(2**32))

  def start(self, runs: list, progress: bool) -> None:
    if len(runs) != 1:
      raise ValueError('clrs_official trains one seed at a time')
    # Built and initialised on a validation batch (step 0 validates before
    # any training batch is drawn); only its shapes matter.
    feedback = clrs_lib.to_feedback(runs[0].val_set.batches[0], self.spec)
    self.net = build_model(
        self.spec, feedback, hint_mode=self.hint_mode,
        checkpoint_path=os.path.join(self.workdir, 'clrs_ckpt'))
    self.net.init(feedback.features, self.seed + 1)
    run, params = runs[0], self.net.params  # a device_get per read
    state = run.restore(dict(params=params, opt_state=self.net.opt_state,
                             best_params=params,
                             data=run.stream.get_state()), progress)
    if run.step:
      self.net.params, self.net.opt_state = state['params'], state['opt_state']
      keys = run.meta['learner']
      self.train_key, self.eval_key = (
          jax.numpy.asarray(keys[k], dtype=jax.numpy.uint32)
          for k in ('train_key', 'eval_key'))

  def checkpoint_meta(self, j: int) -> dict:
    return dict(train_key=np.asarray(self.train_key).tolist(),
                eval_key=np.asarray(self.eval_key).tolist())

  def step(self, members, batches, steps):
    feedback = clrs_lib.to_feedback(batches[0], self.spec)
    key, self.train_key = jax.random.split(self.train_key)
    compiled = self._compiles(feedback)
    loss = self.net.feedback(key, feedback, 0)  # not waited for (loop.py)
    return jax.numpy.reshape(loss, (1,)), {}, compiled

  def state(self, j: int):
    return _host_copy(self.net.params), _host_copy(self.net.opt_state)

  def _predict(self, params, batch, key):
    chunk, graphs = predict_chunk(self.spec, batch), len(batch['lengths'])
    parts = []
    for start in range(0, graphs, chunk):
      part = batch_lib.take_graphs(batch, slice(start, start + chunk))
      features = clrs_lib.to_feedback(part, self.spec).features
      # BaselineModel.predict's own call, with `params` for its current ones.
      preds, _ = self.net.jitted_predict(params, key, features, 0, False, False)
      parts.append({k: dp.data for k, dp in preds.items()})
    if len(parts) == 1:
      return parts[0], {}
    return {k: np.concatenate([np.asarray(p[k]) for p in parts])
            for k in parts[0]}, {}

  def evaluate(self, params, evalset, per_graph: bool = False,
               done: list | None = None) -> dict:
    key, self.eval_key = jax.random.split(self.eval_key)

    # A key per batch predicted, as run.py's collect_and_eval (dm-clrs's
    # nets draw from it in training only, so a batch's prediction does not
    # depend on which key it gets: `done` batches may be skipped).
    def predict(p, batch):
      nonlocal key
      sub, key = jax.random.split(key)
      return self._predict(p, batch, sub)

    return train_lib.evaluate(None, predict, jax.device_put(params), evalset,
                              per_graph, done)

  def warm(self, params, batch):
    return self._predict(jax.device_put(params), batch, jax.random.PRNGKey(0))

  def results(self, results, run, best_params, test, test_set) -> None:
    results.update(hint_mode=self.hint_mode,
                   num_params=count_params(best_params),
                   config=run.config)


def train_official(algorithm: str, *, seed: int, train_steps: int,
                   hint_mode: str, data_cfg: input_pipeline.DataConfig,
                   workdir: str, eval_every: int = 50,
                   progress: bool = False) -> dict:
  """Trains the official BaselineModel with `dear_jax.loop.train` (the loop,
  validation schedule, loss curve and timing of every model); writes and
  returns WORKDIR/results.json. `progress`: a progress bar."""
  check_args(algorithm, train_steps, hint_mode, eval_every)
  clrs = clrs_lib.clrs()
  check_single_device()
  os.makedirs(workdir, exist_ok=True)
  spec = clrs_lib.processed_spec(algorithm)
  testset = splits.load_split(algorithm, 'test', data_cfg)
  run = loop.Run(workdir, seed, algorithm, data_cfg, True, testset.key)
  run.config = dict(
      RUN_PY_DEFAULTS,
      algorithm=algorithm, seed=seed, train_steps=train_steps,
      hint_mode=hint_mode,
      encode_hints=nar.hint_flags(hint_mode)[0],
      decode_hints=nar.hint_flags(hint_mode)[1],
      eval_every=eval_every, batch_size=data_cfg.batch_size,
      init_seed=seed + 1,
      data=dataclasses.asdict(data_cfg),
      train_sizes_used=list(input_pipeline.training_sizes(
          algorithm, data_cfg.train_sizes)),
      val_length_used=splits.validation_length(algorithm, data_cfg),
      val_key=run.val_set.key, test_key=testset.key,
      data_protocol_version=clrs_lib.PROTOCOL_VERSION,
      clrs_version=getattr(clrs, '__version__', 'unknown'),
      jax_version=jax.__version__,
      device=str(jax.local_devices()[0]),
      selection='best validation score (strictly greater), dear_jax.loop',
  )
  learner = OfficialLearner(spec, hint_mode, seed, workdir)
  return loop.train(learner, [run], train_steps, eval_every, testset,
                    algorithm, progress)[0]


def _data_config_args(parser: argparse.ArgumentParser) -> None:
  for field in dataclasses.fields(input_pipeline.DataConfig):
    parser.add_argument(f'--{field.name}', default=None,
                        help=f'DataConfig.{field.name} (default '
                             f'{field.default!r})')


def _data_config(args) -> input_pipeline.DataConfig:
  cfg = {}
  for field in dataclasses.fields(input_pipeline.DataConfig):
    raw = getattr(args, field.name)
    if raw is None:
      continue
    try:
      if field.name == 'train_sizes':
        value = tuple(int(s) for s in raw.split(',') if s.strip())
      elif isinstance(field.default, bool):
        value = raw.lower() in ('1', 'true', 'yes')
      elif isinstance(field.default, int) or field.default is None:
        value = None if raw.lower() == 'none' else int(raw)
      else:
        value = raw
    except ValueError:
      raise ValueError(f'--{field.name}: bad value {raw!r}') from None
    cfg[field.name] = value
  return input_pipeline.DataConfig.from_section(cfg, prefix='--')


class _OneLineParser(argparse.ArgumentParser):

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')


def main(argv=None) -> int:
  # BaselineModel runs on a single device only; on a multi-GPU host default
  # to the first GPU (must happen before jax initialises its backends).
  os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')
  parser = _OneLineParser(
      prog='python -m baselines.clrs_official',
      description='Train dm-clrs BaselineModel (Triplet-GMPNN, run.py '
                  'defaults) on dear_jax data.')
  parser.add_argument('--algorithm', required=True)
  parser.add_argument('--train_steps', type=int, default=10000)
  parser.add_argument('--seed', type=int, default=42)
  parser.add_argument('--hint_mode', default='encoded_decoded',
                      help=', '.join(nar.HINT_MODES) + ' (as run.py)')
  parser.add_argument('--eval_every', type=int, default=50)
  parser.add_argument('--out', default=None,
                      help='workdir (default runs/clrs_official/'
                           'ALGORITHM_HINTMODE_sSEED)')
  parser.add_argument('--quiet', action='store_true')
  parser.add_argument('--jax_cache', default=None,
                      help=compile_cache.FLAG_HELP)
  _data_config_args(parser)
  args = parser.parse_args(argv)
  try:
    _check_settings(args.train_steps, args.hint_mode, args.eval_every, '--')
    data_cfg = _data_config(args)
    clrs_lib.check_algorithm(args.algorithm)
  except (ValueError, TypeError) as e:
    print(f'{parser.prog}: error: {e}', file=sys.stderr)
    return 2
  compile_cache.enable(args.jax_cache)
  out = args.out or os.path.join(
      'runs', MODEL_NAME, f'{args.algorithm}_{args.hint_mode}_s{args.seed}')
  try:
    results = train_official(args.algorithm, seed=args.seed,
                             train_steps=args.train_steps,
                             hint_mode=args.hint_mode, data_cfg=data_cfg,
                             workdir=out, eval_every=args.eval_every,
                             progress=not args.quiet)
  except loop.RunError as e:  # diverged or interrupted
    print(f'{parser.prog}: error: {str(e).splitlines()[0]}', file=sys.stderr)
    return 2
  except RuntimeError as e:
    if 'one local device' not in str(e):
      raise
    print(f'{parser.prog}: error: {e}', file=sys.stderr)
    return 1
  print(results_lib.summary_table(results))
  print(f'results: {os.path.join(out, "results.json")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
