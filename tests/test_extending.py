"""README's "Extending": its code runs as written (so README cannot drift),
and each piece it registers does what its comment says, against references
written here."""

import json
import os
import re
import shlex
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cli_args, tiny_config
from dear_jax import clrs_lib, input_pipeline, processors, run, solver
from dear_jax.input_pipeline import DataConfig

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'README.md')
REGISTRIES = (processors.PROCESSORS, solver.SOLVERS, solver.GRADIENTS,
              clrs_lib.DATA_OPTIONS)


def _section() -> str:
  with open(README) as f:
    return f.read().split('\n## Extending\n', 1)[1].split('\n## ', 1)[0]


def _command_flags() -> list:
  """The --config flags of README's `python my_ext.py ...` command."""
  command = re.search(r'`(python my_ext\.py [^`]*)`', _section()).group(1)
  return [a for a in shlex.split(command) if a.startswith('--config.')]


@pytest.fixture(scope='module')
def ext():
  """README's code blocks run as one module; the registries are restored
  after this file's tests."""
  saved = [dict(r) for r in REGISTRIES]
  module = types.ModuleType('my_ext')
  blocks = re.findall(r'```python\n(.*?)```', _section(), re.S)
  assert blocks
  for block in blocks:
    exec(compile(block, README, 'exec'), module.__dict__)  # pylint: disable=exec-used
  yield module
  for registry, old in zip(REGISTRIES, saved):
    registry.clear()
    registry.update(old)


def test_the_readme_command_names_what_the_readme_registers(ext):
  registered = {'model.processor': processors.PROCESSORS,
                'dear.method': solver.SOLVERS, 'dear.grad': solver.GRADIENTS,
                'data.options': clrs_lib.DATA_OPTIONS}
  flags = dict(f[len('--config.'):].split('=', 1) for f in _command_flags())
  assert set(flags) == set(registered)
  for key, name in flags.items():
    assert name in registered[key], key
  assert processors.PROCESSORS['mean_mpnn'] is ext.MeanMPNN
  assert solver.SOLVERS['mann'] is ext.Mann
  assert solver.GRADIENTS['unroll2'] is ext.Unroll2


def test_mean_mpnn_is_its_formula_and_takes_edge_terms(ext):
  """A numpy transcription of the comment's formula from its parameters;
  the stepwise NAR's route (edge_terms) gives the same output."""
  rng = np.random.default_rng(0)
  b, n, h = 2, 3, 4
  node, hidden = rng.normal(size=(2, b, n, h)).astype(np.float32)
  edge = rng.normal(size=(b, n, n, h)).astype(np.float32)
  graph = rng.normal(size=(b, h)).astype(np.float32)
  proc = processors.build_processor('mean_mpnn', h, gate_bias=0.0)
  params = proc.init(jax.random.PRNGKey(0), node, edge, graph, None,
                     hidden)['params']
  out, latent = proc.apply({'params': params}, node, edge, graph, None, hidden)
  assert latent is None
  dense = lambda x, p: x @ np.asarray(p['kernel']) + np.asarray(p['bias'])
  relu = lambda x: np.maximum(x, 0)
  z = np.concatenate([node, hidden], -1)
  msgs = relu(dense(z, params['Dense_0'])[:, :, None] +
              dense(edge, params['m_edge']))
  want = relu(dense(z, params['Dense_1']) + msgs.mean(1))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  terms = {'m_edge': jnp.asarray(dense(edge, params['m_edge']))}
  via_terms, _ = proc.apply({'params': params}, node, None, graph, None,
                            hidden, edge_terms=terms)
  np.testing.assert_allclose(via_terms, out, rtol=1e-6, atol=1e-6)


def _linear_problem():
  """Per graph f(h) = A h + u, ||A||_2 = 0.5: the fixed point solves
  (I - A) h = u."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=(3, 3))
  a = 0.5 * a / np.linalg.norm(a, 2)
  u = rng.normal(size=(2, 3, 2))
  f = lambda h, p, u: p @ h + u
  return f, a, u


def test_mann_follows_its_rule_and_reaches_the_fixed_point(ext):
  del ext
  f, a, u = _linear_problem()
  cfg = solver.SolverConfig(method='mann', tol=1e-6, tol_mode='abs',
                            max_iter_train=500, max_iter_eval=500)
  h0 = jnp.zeros(u.shape, jnp.float32)
  p, uj = jnp.asarray(a, jnp.float32), jnp.asarray(u, jnp.float32)
  got = solver.record(f, h0, p, (uj,), config=cfg, iterates=4,
                      history=4).iterates
  x, want = np.zeros(u.shape), []
  for k in range(4):  # the rule in README's comment
    want.append(x)
    x = x + (0.5 + 1 / (k + 2)) * (np.einsum('ij,bjk->bik', a, x) + u - x)
  np.testing.assert_allclose(got, np.stack(want, 1), rtol=1e-5, atol=1e-6)
  h, stats = solver.solve(f, h0, p, (uj,), config=cfg, training=True)
  exact = np.linalg.solve(np.eye(3) - a, u)
  assert bool(np.all(stats.converged))
  np.testing.assert_allclose(h, exact, atol=1e-5)


def test_unroll2_is_two_steps_from_the_detached_fixed_point(ext):
  del ext
  f, a, u = _linear_problem()
  c = np.random.default_rng(2).normal(size=u.shape)
  exact = jnp.asarray(np.linalg.solve(np.eye(3) - a, u), jnp.float32)
  uj = jnp.asarray(u, jnp.float32)
  cfg = solver.SolverConfig(grad='unroll2', tol=1e-7, tol_mode='abs',
                            max_iter_train=200)

  def loss(p):
    h, _ = solver.solve(f, jnp.zeros_like(uj), p, (uj,), config=cfg,
                        training=True)
    return jnp.sum(h * c)

  def reference(p):  # the comment: no gradient through the solve, 2 steps
    step = lambda h: jnp.einsum('ij,bjk->bik', p, h) + uj
    return jnp.sum(step(step(exact)) * c)

  p = jnp.asarray(a, jnp.float32)
  np.testing.assert_allclose(jax.grad(loss)(p), jax.grad(reference)(p),
                             rtol=1e-4, atol=1e-5)


def test_the_data_option_changes_only_its_algorithm(ext):
  del ext
  cfg = DataConfig(options=('coarse',))
  assert input_pipeline.data_option('insertion_sort', cfg) == 'coarse'
  assert input_pipeline.data_option('bfs', cfg) is None
  kw = dict(num_samples=4, length=6, seed=0)
  keys = lambda s: next(dp.data for dp in s.next().features.inputs
                        if dp.name == 'key')
  plain = keys(clrs_lib.build_sampler('insertion_sort', None, **kw))
  coarse = keys(clrs_lib.build_sampler('insertion_sort', 'coarse', **kw))
  np.testing.assert_array_equal(coarse, np.round(4 * plain) / 4)
  with pytest.raises(ValueError, match=r"^data\.options must name data "
                     r"options among better_search, coarse, got \('fine',\)$"):
    DataConfig(options=('fine',))


def test_the_readme_command_trains_and_records_its_names(ext, tmp_path,
                                                         cache_dir):
  """README's command line on a tiny config: one run with all four."""
  del ext
  config = tiny_config(cache_dir, 'dear', steps=2)
  workdir = tmp_path / 'w'
  argv = [a.replace('--algorithm=bfs', '--algorithm=insertion_sort')
          for a in cli_args(config, workdir)]
  argv += _command_flags() + ['--config.dear.diagnostics=False']
  assert run.main(argv) == 0
  results = json.loads((workdir / 'results.json').read_text())
  assert results['config']['model']['processor'] == 'mean_mpnn'
  assert (results['config']['dear']['method'],
          results['config']['dear']['grad']) == ('mann', 'unroll2')
  assert results['config']['data']['options'] == ['coarse']
  assert np.isfinite(results['test_score'])
  assert len(results['solver_iterations']) == results['test_graphs']


def test_help_lists_the_registered_names(ext, capsys):
  del ext
  assert run.main(['run', '--help']) == 0
  out = capsys.readouterr().out
  for line in ('  model.processor: triplet_gmpnn, gmpnn, mean_mpnn',
               '  dear.method: anderson, fixed_point, broyden, mann',
               '  dear.grad: ift, phantom, jfb, unroll2',
               '  data.options: better_search, coarse'):
    assert line in out.splitlines()


# --- a model's own keys: the loop asks the model, never which model it is ----

def test_each_model_adds_its_own_keys(finished_run):
  """DEAR's solver statistics reach metrics.jsonl and results.json, the
  NAR's hint mode results.json, and neither gets the other's (the keys the
  loop wrote when it asked which model ran)."""
  solver_logged = {'solver_iters_mean', 'solver_iters_p95',
                   'nonconverged_fraction'}
  for kind in ('dear', 'nar'):
    run_ = finished_run(kind)
    with open(run_.workdir / 'metrics.jsonl') as f:
      records = [json.loads(line) for line in f]
    assert records
    for record in records:
      assert set(record) == {'step', 'val_score'} | (
          solver_logged if kind == 'dear' else set())
    r = run_.results
    if kind == 'dear':
      assert 'hint_mode' not in r and 'iterations' not in r
      assert len(r['solver_iterations']) == r['test_graphs']
      assert r['test_algo_steps'] == [
          s - 1 for s in _test_lengths(run_)]
      assert r['solver_iters_mean'] == pytest.approx(
          np.mean(r['solver_iterations']))
    else:
      assert r['hint_mode'] == 'encoded_decoded'
      assert not any(k.startswith(('solver', 'nonconv')) for k in r)


def _test_lengths(run_) -> list:
  from dear_jax import splits  # pylint: disable=g-import-not-at-top
  test = splits.load_split('bfs', 'test', run_.config.data, keep_hints=False)
  return [int(n) for n in test.lengths]


def test_deqs_progress_entries_are_its_solver_statistics():
  from dear_jax.dear import EquilibriumReasoner  # pylint: disable=g-import-not-at-top
  stats = solver.SolveStats(*(np.array(v) for v in (
      [2, 3, 6, 1], [True, False, True, False], [0.0] * 4, [0.0] * 4,
      [0] * 4, [0] * 4)))
  assert EquilibriumReasoner.progress(None, {'solver': stats}) == dict(
      iters='3.0', nonconv='50%')
