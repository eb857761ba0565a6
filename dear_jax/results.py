"""The results.json every run writes, and its printed summary."""

from __future__ import annotations

import json
import os

# Keys every results.json has (dear adds solver statistics).
REQUIRED_KEYS = (
    'algorithm', 'model', 'seed', 'train_steps', 'test_score', 'val_score',
    'test_nodes', 'test_graphs', 'train_seconds', 'train_steps_per_second',
    'eval_seconds_per_graph',
    'algo_steps_mean', 'num_params', 'config')
SOLVER_KEYS = ('solver_iters_mean', 'solver_iters_p95', 'nonconverged_fraction',
               'final_residual_mean')


def read_json(path: str, required=(), hint: str = '') -> dict | None:
  """The JSON object in `path` (None if there is no file); a damaged file,
  or one without the `required` keys, is a one-line ValueError naming it
  (`hint`: what to do about it)."""
  try:
    with open(path) as f:
      d = json.load(f)
  except FileNotFoundError:
    return None
  except (ValueError, OSError) as e:  # JSONDecodeError, UnicodeDecodeError
    problem = f'cannot be read ({type(e).__name__})'
  else:
    missing = ([k for k in required if k not in d] if isinstance(d, dict)
               else ['a JSON object'])
    if not missing:
      return d
    problem = f'is damaged (lacks {", ".join(missing)})'
  raise ValueError(f'{path} {problem}' + (f'; {hint}' if hint else ''))


def write_results(workdir: str, results: dict) -> str:
  """Writes WORKDIR/results.json atomically (a crash never leaves half a file)."""
  missing = [k for k in REQUIRED_KEYS if k not in results]
  if missing:
    raise ValueError(f'results lack keys {missing}')
  path = os.path.join(workdir, 'results.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(results, f, indent=2, sort_keys=True, default=float)
  os.replace(tmp, path)
  return path


def summary_table(results: dict) -> str:
  """A short human-readable table of the headline numbers."""
  rows = [('algorithm', results['algorithm']), ('model', results['model']),
          ('seed', results['seed']), ('train steps', results['train_steps']),
          ('val score', f"{results['val_score']:.4f}"),
          ('test score (OOD)', f"{results['test_score']:.4f}"),
          ('test graphs x nodes',
           f"{results['test_graphs']} x {results['test_nodes']}"),
          ('true algorithm steps (mean)', f"{results['algo_steps_mean']:.1f}"),
          ('train seconds', f"{results['train_seconds']:.1f}"),
          ('train steps / s (no compiles)',
           f"{results['train_steps_per_second']:.2f}"),
          ('eval ms / graph', f"{1e3 * results['eval_seconds_per_graph']:.2f}"),
          ('parameters', f"{results['num_params']:,}")]
  if 'solver_iters_mean' in results:
    rows += [('solver iterations mean / p95',
              f"{results['solver_iters_mean']:.1f} / "
              f"{results['solver_iters_p95']:.0f}"),
             ('not converged', f"{100 * results['nonconverged_fraction']:.1f}%"
              + ('  <-- WARNING' if results['nonconverged_fraction'] > 0
                 else '')),
             ('final residual mean', f"{results['final_residual_mean']:.3g}")]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k.ljust(width)}  {v}' for k, v in rows)
