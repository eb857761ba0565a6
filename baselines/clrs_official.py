"""dm-clrs's own Triplet-GMPNN `BaselineModel`, trained on dear_jax's data.

This is the reference point for the Flax port and for DEAR: the official haiku
model with every `clrs/examples/run.py` default passed explicitly, fed exactly
the batches dear_jax trains and evaluates on (`dear_jax.input_pipeline`,
`dear_jax.splits`), scored with `clrs.evaluate` the way run.py's
`collect_and_eval` does (pooled over the whole split), and reported in the
common results.json schema (`dear_jax.results`).

Differences from run.py, all on the data side and shared with dear_jax:
training hints are zero-padded in time to `dear_jax.batches.time_bucket` (the
model runs T_padded - 1 steps; outputs are frozen per sample at its true
length, so only the cost changes), and the splits are dear_jax's cached ones.
Like run.py, validation runs after the update of steps 0, eval_every,
2*eval_every, ... (so the last steps after the last multiple of eval_every are
never selected), a new best needs a strictly higher validation score, and the
test uses the best validation parameters (kept in memory, not pickled).

CLI (argparse, because `import clrs` defines absl flags such as `seeds`):

    python -m baselines.clrs_official --algorithm=bfs --train_steps=100 \
        --seed=0 --hint_mode=encoded_decoded --out=/tmp/official_bfs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import input_pipeline
from dear_jax import nar
from dear_jax import sections
from dear_jax import splits
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
                hint_mode: str = 'encoded_decoded', checkpoint_path: str | None = None,
                **overrides):
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


def _copy_params(params):
  # np.array copies: model.params may be a zero-copy view of a device buffer
  # that the jitted update donates and overwrites.
  return jax.tree_util.tree_map(np.array, params)


def predict_split(model, evalset: splits.EvalSet, spec: dict, rng_key):
  """Hard output predictions for a whole split, trimmed to its true size."""
  preds = []
  for batch in evalset.batches:
    new_rng_key, rng_key = jax.random.split(rng_key)
    features = clrs_lib.to_feedback(batch, spec).features
    cur_preds, _ = model.predict(new_rng_key, features, algorithm_index=0)
    preds.append(cur_preds)
  n = evalset.num_samples
  return jax.tree_util.tree_map(
      lambda *x: np.concatenate([np.asarray(a) for a in x], axis=0)[:n],
      *preds)


def evaluate_split(model, evalset: splits.EvalSet, spec: dict,
                   rng_key) -> dict:
  """`clrs.evaluate` pooled over the split, as run.py's collect_and_eval."""
  preds = predict_split(model, evalset, spec, rng_key)
  truth = clrs_lib.datapoints(evalset.outputs, spec)
  evals = clrs_lib.clrs().evaluate(truth, preds)
  return {k: float(v) for k, v in evals.items()}


def train_official(algorithm: str, *, seed: int, train_steps: int,
                   hint_mode: str, data_cfg: input_pipeline.DataConfig,
                   workdir: str, eval_every: int = 50,
                   verbose: bool = False) -> dict:
  """Trains the official BaselineModel; writes and returns WORKDIR/results.json.

  Timing keys, defined as dear_jax.train's: `train_seconds` is the wall time
  of the training loop without validations (data, compiles, updates);
  `train_steps_per_second` counts only the model updates (`model.feedback`,
  including the host-to-device copy) of steps that did not compile, i.e.
  steady state; `train_loop_steps_per_second` adds the on-the-fly data
  generation of those steps. `eval_seconds_per_graph` is the wall time of one
  test pass after a compile warm-up, divided by the number of test graphs.
  """
  check_args(algorithm, train_steps, hint_mode, eval_every)
  clrs = clrs_lib.clrs()
  check_single_device()
  os.makedirs(workdir, exist_ok=True)
  log = print if verbose else (lambda *a, **k: None)

  spec = clrs_lib.processed_spec(algorithm)
  valset = splits.load_split(algorithm, 'val', data_cfg, seed)
  testset = splits.load_split(algorithm, 'test', data_cfg)
  stream = input_pipeline.TrainStream(algorithm, data_cfg, seed)

  # run.py: the jax key comes from a RandomState(seed); init uses seed + 1.
  rng = np.random.RandomState(seed)
  rng_key = jax.random.PRNGKey(rng.randint(2**32))
  model = build_model(spec,
                      clrs_lib.to_feedback(valset.batches[0], spec),
                      hint_mode=hint_mode,
                      checkpoint_path=os.path.join(workdir, 'clrs_ckpt'))

  loss_curve, val_curve = [], []
  best_score, best_step, best_params, best_evals = -1.0, -1, None, None
  next_eval = 0
  steady_update_s, steady_loop_s, steady_steps, compile_steps = 0.0, 0.0, 0, 0
  validation_seconds = 0.0
  t_start = time.perf_counter()
  for step in range(train_steps):
    t0 = time.perf_counter()
    feedback = clrs_lib.to_feedback(next(stream), spec)
    if step == 0:
      model.init(feedback.features, seed + 1)
    rng_key, new_rng_key = jax.random.split(rng_key)
    cache_before = model.jitted_feedback._cache_size()  # pylint: disable=protected-access
    t1 = time.perf_counter()
    loss = float(model.feedback(rng_key, feedback, 0))
    t2 = time.perf_counter()
    rng_key = new_rng_key
    loss_curve.append([step, loss])
    if step > 0 and model.jitted_feedback._cache_size() == cache_before:  # pylint: disable=protected-access
      steady_update_s += t2 - t1
      steady_loop_s += t2 - t0
      steady_steps += 1
    else:
      compile_steps += 1

    if step >= next_eval:
      t_val = time.perf_counter()
      new_rng_key, rng_key = jax.random.split(rng_key)
      evals = evaluate_split(model, valset, spec, new_rng_key)
      val_curve.append([step, evals['score']])
      next_eval += eval_every
      if evals['score'] > best_score or step == 0:
        best_score, best_step, best_evals = evals['score'], step, evals
        best_params = _copy_params(model.params)
      log(f'step {step} loss {loss:.4f} val {evals["score"]:.4f} '
          f'(best {best_score:.4f} at {best_step})', flush=True)
      validation_seconds += time.perf_counter() - t_val
  train_seconds = time.perf_counter() - t_start - validation_seconds

  # Test with the best validation parameters.
  model.params = best_params
  new_rng_key, rng_key = jax.random.split(rng_key)
  warm = clrs_lib.to_feedback(testset.batches[0], spec).features
  jax.block_until_ready(model.predict(new_rng_key, warm, algorithm_index=0))
  t0 = time.perf_counter()
  preds = predict_split(model, testset, spec, new_rng_key)
  test_pred_seconds = time.perf_counter() - t0
  test_evals = clrs.evaluate(clrs_lib.datapoints(testset.outputs, spec), preds)
  test_evals = {k: float(v) for k, v in test_evals.items()}

  def rate(steps, seconds):
    return steps / seconds if seconds > 0 else float('nan')

  config = dict(
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
      val_key=valset.key, test_key=testset.key,
      data_protocol_version=clrs_lib.PROTOCOL_VERSION,
      clrs_version=getattr(clrs, '__version__', 'unknown'),
      jax_version=jax.__version__,
      device=str(jax.local_devices()[0]),
      selection='best validation score (strictly greater), run.py style',
  )
  results = dict(
      algorithm=algorithm,
      model=MODEL_NAME,
      seed=seed,
      hint_mode=hint_mode,
      train_steps=train_steps,
      test_score=test_evals['score'],
      test_scores=test_evals,
      val_score=best_score,
      val_scores=best_evals,
      best_step=best_step,
      test_nodes=int(batch_lib.num_nodes(testset.batches[0])),
      test_graphs=int(testset.num_samples),
      train_seconds=train_seconds,
      train_steps_per_second=rate(steady_steps, steady_update_s),
      train_loop_steps_per_second=rate(steady_steps, steady_loop_s),
      compile_steps=compile_steps,
      eval_seconds_per_graph=test_pred_seconds / testset.num_samples,
      algo_steps_mean=float(np.mean(testset.lengths) - 1),
      num_params=count_params(model.params),
      val_curve=val_curve,
      loss_curve=loss_curve,
      config=config,
  )
  results_lib.write_results(workdir, results)
  return results


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
  _data_config_args(parser)
  args = parser.parse_args(argv)
  try:
    _check_settings(args.train_steps, args.hint_mode, args.eval_every, '--')
    data_cfg = _data_config(args)
    clrs_lib.check_algorithm(args.algorithm)
  except (ValueError, TypeError) as e:
    print(f'{parser.prog}: error: {e}', file=sys.stderr)
    return 2
  out = args.out or os.path.join(
      'runs', MODEL_NAME, f'{args.algorithm}_{args.hint_mode}_s{args.seed}')
  try:
    results = train_official(args.algorithm, seed=args.seed,
                             train_steps=args.train_steps,
                             hint_mode=args.hint_mode, data_cfg=data_cfg,
                             workdir=out, eval_every=args.eval_every,
                             verbose=not args.quiet)
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
