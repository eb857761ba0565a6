"""Writes the notebooks of this folder (without outputs) from the cells below.

    python notebooks/generate.py

The .ipynb files are generated: edit the cells here and rerun, so that the
four notebooks keep one setup cell and one smoke budget. tests/test_notebooks.py
checks that the committed files are what this script writes, carry no outputs,
and run end to end in a Jupyter kernel with DEAR_JAX_NOTEBOOK_SMOKE=1.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import tomllib

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
  sys.path.insert(0, os.path.dirname(HERE))  # configs/, read for the text
# The repository's GitHub owner/name, from pyproject.toml's Repository URL
# (the one place it is written; a fork sets its own there and reruns this
# script, which writes the notebooks' badges and setup cell and README's
# badges).
with open(os.path.join(os.path.dirname(HERE), 'pyproject.toml'), 'rb') as _f:
  GITHUB_REPO = tomllib.load(_f)['project']['urls']['Repository'].removeprefix(
      'https://github.com/')
BRANCH = 'main'
# Cells whose output must hold a figure carry this tag (tests check it).
FIGURE = 'figure'


def colab_url(name: str) -> str:
  return (f'https://colab.research.google.com/github/{GITHUB_REPO}/blob/'
          f'{BRANCH}/notebooks/{name}.ipynb')


def badge(name: str) -> str:
  return (f'[![Open In Colab](https://colab.research.google.com/assets/'
          f'colab-badge.svg)]({colab_url(name)})')


# How the notebooks' text names the default settings it describes (the
# solvers and gradients name themselves: dear_jax.solver's registries).
BACKWARD_WORDS = {'anderson': 'the forward solve\'s Anderson acceleration',
                  'gmres': 'GMRES', 'bicgstab': 'BiCGStab'}


def defaults() -> dict:
  """The settings of configs/default.py that the notebooks' text describes,
  in words, so the text follows the defaults when they change."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from dear_jax import solver  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  d = c.dear
  residual = 'relative residual' if d.tol_mode == 'rel' else 'residual'
  penalty = (f'a Jacobian penalty of weight {d.jac_reg_weight:g} (which makes '
             'the trained map contract, so the answer is its fixed point)'
             if d.jac_reg_weight else 'no Jacobian penalty')
  return dict(
      hidden=c.model.hidden, steps=c.train.steps, batch=c.data.batch_size,
      sizes=f'{min(c.data.train_sizes)} to {max(c.data.train_sizes)}',
      eval_every=c.train.eval_every, val_length=c.data.val_length,
      test_length=c.data.test_length, tol=f'{d.tol:g}',
      solve=(f'{solver.SOLVERS[d.method].WORDS or d.method} to a {residual} of '
             f'{d.tol:g} (at most {d.max_iter_train} iterations in training, '
             f'{d.max_iter_eval} in evaluation)'),
      grad=solver.GRADIENTS[d.grad].WORDS or f'the `{d.grad}` gradient',
      grad_key=d.grad, penalty=penalty,
      backward=BACKWARD_WORDS.get(d.backward_solver, d.backward_solver))


def md(text: str):
  return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(*parts: str, figure: bool = False):
  """A code cell from parts, each dedented on its own."""
  text = '\n\n'.join(textwrap.dedent(p).strip('\n') for p in parts)
  cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip())
  if figure:
    cell.metadata['tags'] = [FIGURE]
  return cell


SETUP = code(f"""
    # Setup. Opened from a clone of the repository, the checkout is put on
    # sys.path. On Colab the repository is cloned first unless the notebook
    # sits in a clone, then the package with its pinned dependencies (jax with
    # CUDA on a GPU runtime) is installed; elsewhere nothing is installed.
    import importlib.util, os, shutil, subprocess, sys

    GITHUB_REPO = '{GITHUB_REPO}'  # the repository's GitHub owner/name
    SMOKE = os.environ.get('DEAR_JAX_NOTEBOOK_SMOKE') == '1'  # CI's tiny budget

    here = os.path.abspath(os.getcwd())
    # The checkout this notebook sits in, if it was opened from a clone.
    REPO_DIR = next((d for d in (here, os.path.dirname(here))
                     if os.path.isfile(os.path.join(d, 'dear_jax', '__init__.py'))), None)
    if 'google.colab' in sys.modules:
        if REPO_DIR is None:
            REPO_DIR = '/content/dear_jax_repo'
            if not os.path.isdir(REPO_DIR):
                url = f'https://github.com/{{GITHUB_REPO}}'
                cloned = subprocess.run(['git', 'clone', '--depth=1', url, REPO_DIR],
                                        capture_output=True, check=False,
                                        env=dict(os.environ, GIT_TERMINAL_PROMPT='0'))
                if cloned.returncode != 0:
                    print(f'Could not clone {{url}}: set GITHUB_REPO above to the '
                          'repository owner/name, or open this notebook from a clone.')
        if os.path.isfile(os.path.join(REPO_DIR, 'pyproject.toml')):
            import tomllib
            # pyproject's runtime pins, not its extras (test, notebook, ray):
            # Colab keeps its own Jupyter kernel.
            with open(os.path.join(REPO_DIR, 'pyproject.toml'), 'rb') as f:
                pins = tomllib.load(f)['project']['dependencies']
            if shutil.which('nvidia-smi') and subprocess.run(
                    ['nvidia-smi'], capture_output=True).returncode == 0:
                pins = ['jax[cuda12]' + p[3:] if p.startswith('jax==') else p for p in pins]
            subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', *pins], check=True)
            subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', REPO_DIR],
                           check=True)
    if REPO_DIR and os.path.isdir(os.path.join(REPO_DIR, 'dear_jax')):
        if REPO_DIR not in sys.path:
            sys.path.insert(0, REPO_DIR)
    elif importlib.util.find_spec('dear_jax') is None:
        print('dear_jax not found: open this notebook from a clone of the repository, '
              'or pip install it.')

    import jax
    print('jax', jax.__version__, jax.devices(), '| smoke budget' if SMOKE else '')
""")

# The smoke budget: one training size, graphs of 8 nodes everywhere, 8
# validation and 8 test graphs, hidden 16, a few steps, a fresh folder.
BUDGET = code("""
    import tempfile

    # Runs and (in smoke mode) the dataset cache live under WORK.
    if SMOKE:
        WORK = os.path.join(tempfile.gettempdir(), 'dear_jax_notebooks_smoke')
    else:
        WORK = os.path.join(os.path.expanduser('~'), 'dear_jax_notebooks')
    os.makedirs(WORK, exist_ok=True)
    CACHE = os.path.join(WORK, 'datasets')

    SMOKE_DATA = dict(train_sizes=(8,), batch_size=8, val_length=8, test_length=8,
                      val_num_samples=8, test_num_samples=8, eval_batch_size=8)


    def shrink(config):
        \"\"\"DEAR_JAX_NOTEBOOK_SMOKE=1: just enough to run every cell.\"\"\"
        config.train.steps, config.train.eval_every = 6, 3
        config.model.hidden = 16
        config.data.update(SMOKE_DATA, cache_dir=CACHE)
        if 'diagnostics' in config.dear:  # the post-test fixed-point checks
            config.dear.diagnostics = False
        return config
""")

# baselines.compare arguments of the smoke budget (dear_vs_stepwise.ipynb and
# results.ipynb share them, so results.ipynb reuses the runs when both run).
SMOKE_COMPARE = """
    def smoke_compare_args(out):
        \"\"\"baselines.compare flags of the smoke budget (results.ipynb uses the
        same ones, so it reuses these runs when both notebooks ran).\"\"\"
        from configs import default
        overrides = ['--config.model.hidden=16'] + [
            f'--config.data.{k}={v[0] if isinstance(v, tuple) else v}' for k, v in SMOKE_DATA.items()]
        if 'diagnostics' in default.get_config().dear:
            overrides.append('--config.dear.diagnostics=False')
        return (['--out', out, '--algorithms', 'minimum',
                 '--models', 'dear,nar_nohint', '--seeds', '1', '--train_steps', '6',
                 '--eval_every', '3', '--no_memory', '--quiet', '--cache_dir', CACHE]
                + overrides)
"""


def quickstart():
  d = defaults()
  return [
      md(f"""
          {badge('quickstart')}

          # dear_jax quick start: DEAR on BFS

          DEAR (Deep Equilibrium Algorithmic Reasoning) replaces the stepwise
          reasoner's loop of one processor step per algorithm step by a
          fixed-point solve: it looks for H\\* = P(H\\*; inputs) from H0 = 0 and
          decodes the answer from H\\*, without hints and without being told
          how many steps the algorithm takes.

          This notebook trains DEAR on breadth-first search (a few minutes on a
          Colab GPU or on a laptop CPU), then shows

          1. the results table of the run,
          2. how the solver's residual falls with each iteration on one test batch,
          3. one test graph with the true and the predicted BFS tree side by side,
          4. how many solver iterations DEAR spends against how many steps BFS takes.
          """),
      SETUP,
      BUDGET,
      md(f"""
          ## 1. Train

          `configs/default.py` is the CPU-sized preset: hidden size {d['hidden']},
          {d['steps']} steps of batches of {d['batch']} graphs of {d['sizes']}
          nodes; the solve is {d['solve']}; the gradient is {d['grad']}, with
          {d['penalty']}. `train_and_evaluate` validates every
          {d['eval_every']} steps on graphs of {d['val_length']} nodes and tests
          the best parameters on the official CLRS test split: graphs of
          **{d['test_length']}** nodes, four times the largest training size.
          It writes `results.json` and orbax checkpoints to `workdir`.
          """),
      code("""
          import json
          import numpy as np
          import matplotlib.pyplot as plt
          from configs import default
          from dear_jax import batches as batch_lib, checkpoints, clrs_lib, factory, splits, train
          from dear_jax.results import summary_table

          ALGORITHM = 'bfs'
          config = default.get_config()
          config.model_kind = 'dear'
          if SMOKE:
              shrink(config)
          workdir = os.path.join(WORK, f'quickstart_{ALGORITHM}_dear')
          shutil.rmtree(workdir, ignore_errors=True)  # train afresh (a kept workdir resumes)
          results = train.train_and_evaluate(config, workdir, ALGORITHM, progress=not SMOKE)
          """),
      md("""
          ## 2. Results

          What to look at: the **test score** (the official out-of-distribution
          split, graphs four times larger than in training) against the
          validation score (training-sized graphs); the **solver iterations**
          per test graph against the true number of BFS steps; and the share of
          test graphs on which the solver did **not converge** within its cap
          (their answers come from the last iterate, not from a fixed point).
          Below the table: the validation score and the training loss during
          training.
          """),
      code("""
          print(summary_table(results))

          fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
          steps, scores = zip(*results['val_curve'])
          ax1.plot(steps, scores, 'o-', color='tab:red')
          ax1.set(xlabel='training step', ylabel='validation score',
                  title=f'{ALGORITHM}: validation score (best at step {results["best_step"]})')
          if results['loss_curve']:
              steps, loss = zip(*results['loss_curve'])
              ax2.plot(steps, loss, 'o-', color='tab:red')
          ax2.set(xlabel='training step', ylabel='mean training loss', yscale='log',
                  title=f'{ALGORITHM}: training loss')
          fig.tight_layout()
          plt.show()
          """, figure=True),
      md("""
          ## 3. Residual against iterations on one test batch

          The solver stops at the first iterate whose relative residual
          ‖f(h) − h‖ / ‖f(h)‖ is under the tolerance (dashed line). Here the same
          updates run for a fixed number of evaluations past that point, for
          Anderson acceleration (DEAR's solver) and for plain iteration
          h ← f(h), one thin line per test graph and the median in bold.

          What to look at: where the curves cross the tolerance (about the
          solver's iteration count), and whether they **keep falling** after it
          (the model has a fixed point there) or **level off** (the solver stops
          on an early iterate that is not a fixed point; a tighter tolerance
          would then change the answers).
          """),
      code("""
          import dataclasses, functools
          from dear_jax import solver

          dcfg = train.data_config(config)
          test_set = splits.load_split(ALGORITHM, 'test', dcfg, keep_hints=False)
          batch = test_set.batches[0]
          graphs = min(test_set.num_samples, len(batch['lengths']))
          model = factory.build_model(config, clrs_lib.processed_spec(ALGORITHM), batch)
          params = checkpoints.load_best_params(workdir)
          EVALUATIONS = 12 if SMOKE else 60
          RESIDUAL = dict(rel='relative residual ‖f(h) − h‖ / ‖f(h)‖', abs='residual ‖f(h) − h‖')


          @functools.partial(jax.jit, static_argnums=2)
          def residuals(params, batch, solver_cfg):
              f, h0, args = model.equilibrium(params, batch, training=False, key=None)
              return solver.residual_history(f, h0, params['processor'], args,
                                             config=solver_cfg, evaluations=EVALUATIONS)


          solvers = {
              f'{model.solver_cfg.method} (DEAR\\'s solver)': model.solver_cfg,
              'plain iteration h ← f(h)': dataclasses.replace(
                  model.solver_cfg, method='fixed_point', damping=1.0),
          }
          fig, ax = plt.subplots(figsize=(7, 4.2))
          x = np.arange(1, EVALUATIONS + 1)
          for (label, cfg), color in zip(solvers.items(), ('tab:red', 'tab:blue')):
              curves = np.asarray(residuals(params, batch, cfg))[:graphs]
              ax.plot(x, curves.T, color=color, alpha=0.15, lw=0.8)
              ax.plot(x, np.median(curves, 0), color=color, lw=2.5, label=f'{label}, median')
          ax.axhline(model.solver_cfg.tol, ls='--', color='k',
                     label=f'tolerance {model.solver_cfg.tol:g}')
          ax.axvline(results['solver_iters_mean'], ls=':', color='tab:red',
                     label=f'iterations the solver used (mean {results["solver_iters_mean"]:.1f})')
          ax.set(yscale='log', xlabel='f evaluations',
                 ylabel=RESIDUAL[model.solver_cfg.tol_mode],
                 title=f'{ALGORITHM}: residual per test graph ({graphs} graphs, '
                       f'n={batch_lib.num_nodes(batch)})')
          ax.legend(fontsize=8)
          plt.show()
          """, figure=True),
      md("""
          ## 4. One test graph: the true and the predicted BFS tree

          BFS outputs a parent pointer per node (the source, and nodes BFS
          does not reach, point to themselves). Nodes sit on rings by their true
          distance from the source (gold star). Left: the true tree. Right: the
          predicted pointers, **green** where they match the true parent and
          **red** where they do not. We draw the test graph with the most wrong
          pointers, so that the mistakes, if any, are visible; grey lines are the
          graph's edges. Several parents are often equally correct for BFS
          (any neighbour one ring further in); CLRS scores only the one its
          sampler's BFS picked.
          """),
      code("""
          from matplotlib.lines import Line2D

          predict = jax.jit(model.predict)
          preds, _ = predict(params, batch)
          pi_pred = np.asarray(preds['pi'])[:graphs].astype(int)
          pi_true = np.asarray(batch['outputs']['pi'])[:graphs].astype(int)
          wrong = (pi_pred != pi_true).sum(1)
          g = int(np.argmax(wrong))
          n = pi_true.shape[1]
          source = int(np.argmax(np.asarray(batch['inputs']['s'])[g]))
          adj = np.asarray(batch['inputs']['adj'])[g]


          def ring_layout(pi, source):
              \"\"\"Ring d = true BFS depth; children placed next to their parent.\"\"\"
              children = {i: [] for i in range(len(pi))}
              for i, p in enumerate(pi):
                  if p != i:
                      children[p].append(i)
              depth, angle, ring, queue = {source: 0}, {source: 0.0}, [[source]], [source]
              while queue:
                  nxt = sorted((c for u in queue for c in children[u]),
                               key=lambda c: (angle[pi[c]], c))
                  if not nxt:
                      break
                  for j, c in enumerate(nxt):
                      depth[c] = depth[pi[c]] + 1
                      angle[c] = 2 * np.pi * (j + 0.5) / len(nxt)
                  ring.append(nxt)
                  queue = nxt
              unreached = [i for i in range(len(pi)) if i not in depth]
              for j, c in enumerate(unreached):
                  depth[c], angle[c] = len(ring), 2 * np.pi * (j + 0.5) / len(unreached)
              return {i: (depth[i] * np.cos(angle[i]), depth[i] * np.sin(angle[i]))
                      for i in range(len(pi))}, len(unreached)


          pos, unreached = ring_layout(pi_true[g], source)


          def draw(ax, pi, title, truth=None):
              for i, j in zip(*np.nonzero(np.triu(adj, 1))):
                  ax.plot(*zip(pos[i], pos[j]), color='0.85', lw=0.4, zorder=0)
              for i, p in enumerate(pi):
                  ok = truth is None or p == truth[i]
                  color = 'tab:blue' if truth is None else ('tab:green' if ok else 'tab:red')
                  if p != i:
                      ax.annotate('', xy=pos[i], xytext=pos[p], zorder=2, arrowprops=dict(
                          arrowstyle='-|>', color=color, lw=1.3, shrinkA=4, shrinkB=4))
                  ax.scatter(*pos[i], s=40, zorder=3, color='white',
                             edgecolors='k' if ok else 'tab:red', linewidths=1.5 if ok else 2.5)
              ax.scatter(*pos[source], s=260, marker='*', color='gold', edgecolors='k', zorder=4)
              ax.set_title(title)
              ax.set_aspect('equal')
              ax.axis('off')


          fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6))
          draw(ax1, pi_true[g], f'True BFS tree (test graph {g}, n={n}, '
                                f'{unreached} unreached)')
          draw(ax2, pi_pred[g], f'DEAR\\'s prediction: {wrong[g]} of {n} pointers wrong',
               truth=pi_true[g])
          fig.legend(handles=[
              Line2D([], [], color='tab:blue', label='true parent → child'),
              Line2D([], [], color='tab:green', label='predicted = true parent'),
              Line2D([], [], color='tab:red', label='predicted ≠ true parent'),
              Line2D([], [], color='0.85', label='graph edge'),
              Line2D([], [], marker='*', color='gold', markeredgecolor='k', ls='',
                     markersize=14, label='source')], loc='lower center', ncol=5)
          fig.subplots_adjust(bottom=0.08, wspace=0.05)
          plt.show()
          print(f'wrong pointers per test graph: {wrong.tolist()}')
          """, figure=True),
      md("""
          ## 5. Solver iterations against the true number of steps

          A stepwise reasoner runs exactly as many processor steps as the
          algorithm (it is told the count). DEAR's cost is its solver's
          iteration count instead. Each dot is one graph: validation graphs
          (training sizes, random edge densities) and test graphs (64 nodes);
          the dashed line is one iteration per step.

          What to look at: whether the iterations follow the steps. BFS needs
          only 2 or 3 steps on the dense test graphs, so DEAR cannot save
          processor applications here; on algorithms whose step count grows
          with n (sorting, Prim's MST) the NAR's steps outgrow DEAR's
          iterations: see `dear_vs_stepwise.ipynb`.
          """),
      code("""
          val_set = splits.load_split(ALGORITHM, 'val', dcfg, config.train.seed,
                                      keep_hints=False)
          val = train.evaluate(model, predict, params, val_set)
          rng = np.random.default_rng(0)
          jitter = lambda k: rng.uniform(-0.15, 0.15, k)
          fig, ax = plt.subplots(figsize=(6.5, 4.2))
          for label, steps, iters, color in (
                  (f'validation graphs (n={batch_lib.num_nodes(val_set.batches[0])})',
                   val_set.lengths - 1, val['iterations'], 'tab:orange'),
                  (f'test graphs (n={results["test_nodes"]})',
                   np.asarray(results['test_algo_steps']), results['solver_iterations'],
                   'tab:red')):
              ax.scatter(steps + jitter(len(steps)), np.asarray(iters) + jitter(len(iters)),
                         s=14, alpha=0.6, color=color, label=label)
          top = max(max(val['iterations']), max(results['solver_iterations']),
                    int(val_set.lengths.max()))
          ax.plot([0, top], [0, top], 'k--', lw=1, label='one iteration per step')
          ax.set(xlabel='true algorithm steps (hint length − 1)',
                 ylabel='DEAR solver iterations',
                 title=f'{ALGORITHM}: solver iterations vs true steps per graph')
          ax.legend(fontsize=8)
          plt.show()
          """, figure=True),
  ]


def dear_vs_stepwise():
  return [
      md(f"""
          {badge('dear_vs_stepwise')}

          # DEAR against the stepwise reasoner

          `baselines.compare` trains, on the same samplers, seeds, validation
          and test sets:

          - `dear`: the equilibrium reasoner (no hints, no step count);
          - `nar_nohint`: the stepwise Flax NAR (Triplet-GMPNN) without hints,
            told the true number of steps;
          - `clrs_official`: dm-clrs's own `BaselineModel` with CLRS `run.py`'s
            defaults (hints encoded and decoded), the published baseline.

          At the default budget: BFS (2 to 3 steps on the test graphs) and
          insertion sort (n − 1 steps), 500 steps each, one seed: about
          10 minutes on a Colab GPU. Then this notebook measures how DEAR's
          iteration count and both models' time per graph grow with the graph
          size n (16, 32, 64, 128).

          The smoke budget (`DEAR_JAX_NOTEBOOK_SMOKE=1`, for CI) trains only
          `dear` and `nar_nohint`, for 6 steps, on `minimum` (n steps, and the
          fastest to compile): `clrs_official` and the permutation outputs of
          sorting compile too slowly for it on a CPU.
          """),
      SETUP,
      BUDGET,
      md("""
          ## 1. Train with `baselines.compare`

          The same as `python -m baselines.compare --out=OUT ...` on the command
          line. Runs that already finished in `OUT` are skipped, so rerunning
          this cell only redraws the reports.
          """),
      code("""
          import glob, json, time
          import numpy as np
          import matplotlib.pyplot as plt
          from IPython.display import Image, Markdown, display
          from baselines import compare, plots  # noqa: F401  (plots selects matplotlib's Agg)
          %matplotlib inline
          """, SMOKE_COMPARE, """

          if SMOKE:
              OUT = os.path.join(WORK, 'compare_smoke')
              ALGORITHMS, MODELS = ['minimum'], ['dear', 'nar_nohint']
              args = smoke_compare_args(OUT)
          else:
              OUT = os.path.join(WORK, 'compare')
              ALGORITHMS = ['bfs', 'insertion_sort']
              MODELS = ['dear', 'nar_nohint', 'clrs_official']
              args = ['--out', OUT, '--algorithms', ','.join(ALGORITHMS),
                      '--models', ','.join(MODELS), '--seeds', '1',
                      '--train_steps', '500', '--eval_every', '50']
          t0 = time.time()
          rc = compare.main(args)
          assert rc == 0, f'baselines.compare exited with code {rc}'
          print(f'{time.time() - t0:.0f} s')
          """),
      md("""
          ## 2. The tables `baselines.compare` wrote (`OUT/results.md`)

          What to look at: the test score of each model beside the published
          Triplet-GMPNN score (trained 10,000 steps, 10 seeds; a reference, not
          a like-for-like run), the **steady-state training steps per second**
          and the **inference time per test graph**, DEAR's solver iterations
          against the true number of steps, and the compiled memory of one
          training step.
          """),
      code("""
          with open(os.path.join(OUT, 'results.md')) as f:
              display(Markdown(f.read()))
          """),
      md("""
          ## 3. The plots it wrote (`OUT/plots/`)

          - `scores.png`: test score per algorithm and model (error bars: the
            spread over seeds, when there are several), published score as a
            black diamond.
          - `iterations_vs_steps.png`: DEAR's solver iterations against the true
            steps, per test graph.
          - `convergence.png`: per algorithm, the residual of its first DEAR
            run's solver and of plain iteration on one test batch, past the
            tolerance.
          - `training_curves.png`: validation score and training loss per model.
          """),
      code("""
          for path in sorted(glob.glob(os.path.join(OUT, 'plots', '*.png'))):
              display(Markdown(f'**{os.path.basename(path)}**'))
              display(Image(filename=path))
          """, figure=True),
      md("""
          ## 4. How iterations and time per graph grow with n

          The trained `dear` and `nar_nohint` parameters of each algorithm, on
          test-sampler graphs of n = 16, 32, 64 and 128 nodes (8 graphs per
          size, one batch): the NAR runs one processor step per algorithm step,
          DEAR as many solver iterations as its tolerance needs (at most
          `dear.max_iter_eval`). Times are of the jitted network (encoders,
          processor steps or solve, decoders; not dm-clrs's post-processing of
          the outputs), compile excluded, median of 3 calls, divided by the
          batch size. On a CPU, n = 128 takes minutes for the NAR on insertion
          sort.

          What to look at: on insertion sort the NAR's steps grow like n while
          DEAR's iterations stay roughly flat, so the time ratio grows with n;
          on BFS both stay small. The right panel has log scales.
          """),
      code("""
          import functools
          import matplotlib.ticker
          import ml_collections
          from dear_jax import checkpoints, clrs_lib, factory, input_pipeline, splits, train

          SIZES = (8, 16) if SMOKE else (16, 32, 64, 128)
          GRAPHS, REPEATS = (2, 1) if SMOKE else (8, 3)
          rows = []
          for algorithm in ALGORITHMS:
              spec = clrs_lib.processed_spec(algorithm)
              for name in ('dear', 'nar_nohint'):
                  workdir = compare.run_dir(OUT, algorithm, name, 0)
                  with open(os.path.join(workdir, 'results.json')) as f:
                      config = ml_collections.ConfigDict(json.load(f)['config'])
                  params = checkpoints.load_best_params(workdir)
                  model = forward = None
                  for n in SIZES:
                      cfg = input_pipeline.DataConfig(test_length=n, test_num_samples=GRAPHS,
                                                      eval_batch_size=GRAPHS,
                                                      cache_dir=config.data.cache_dir)
                      split = splits.load_split(algorithm, 'test', cfg,
                                                keep_hints=factory.uses_hints(config))
                      batch = split.batches[0]
                      if model is None:  # parameters do not depend on n
                          model = factory.build_model(config, spec, batch)
                          forward = jax.jit(functools.partial(model.forward, training=False,
                                                              key=jax.random.PRNGKey(0)))
                      _, _, aux = jax.block_until_ready(forward(params, batch))  # compiles
                      times = []
                      for _ in range(REPEATS):
                          t0 = time.perf_counter()
                          jax.block_until_ready(forward(params, batch))
                          times.append(time.perf_counter() - t0)
                      row = dict(algorithm=algorithm, model=name, n=n,
                                 ms_per_graph=1e3 * float(np.median(times)) / GRAPHS,
                                 true_steps=float(np.mean(split.lengths - 1)))
                      if 'solver' in aux:
                          row['iterations'] = float(np.mean(aux['solver'].iterations))
                      rows.append(row)

          display(Markdown('| algorithm | n | true steps | DEAR iterations | DEAR ms/graph '
                           '| NAR ms/graph | NAR / DEAR time |\\n|---|---|---|---|---|---|---|\\n' +
                           '\\n'.join(
              f'| {a} | {n} | {d["true_steps"]:.1f} | {d["iterations"]:.1f} | '
              f'{d["ms_per_graph"]:.2f} | {s["ms_per_graph"]:.2f} | '
              f'{s["ms_per_graph"] / d["ms_per_graph"]:.1f}x |'
              for a in ALGORITHMS for n in SIZES
              for d in [r for r in rows if (r['algorithm'], r['model'], r['n']) == (a, 'dear', n)]
              for s in [r for r in rows if (r['algorithm'], r['model'], r['n']) == (a, 'nar_nohint', n)])))

          fig, axes = plt.subplots(len(ALGORITHMS), 2, figsize=(11, 3.6 * len(ALGORITHMS)),
                                   squeeze=False)
          for (ax1, ax2), algorithm in zip(axes, ALGORITHMS):
              dear = [r for r in rows if r['algorithm'] == algorithm and r['model'] == 'dear']
              nar = [r for r in rows if r['algorithm'] == algorithm and r['model'] == 'nar_nohint']
              ns = [r['n'] for r in dear]
              ax1.plot(ns, [r['true_steps'] for r in nar], 'o-', color='tab:cyan',
                       label='stepwise NAR: processor steps (= true steps)')
              ax1.plot(ns, [r['iterations'] for r in dear], 's-', color='tab:red',
                       label='DEAR: solver iterations (mean)')
              ax1.set(xscale='log', xlabel='graph size n',
                      ylabel='processor applications per graph',
                      title=f'{algorithm}: steps vs iterations')
              ax1.legend(fontsize=8)
              ax2.plot(ns, [r['ms_per_graph'] for r in nar], 'o-', color='tab:cyan',
                       label='stepwise NAR (no hints)')
              ax2.plot(ns, [r['ms_per_graph'] for r in dear], 's-', color='tab:red', label='DEAR')
              ax2.set(xscale='log', yscale='log', xlabel='graph size n',
                      ylabel='inference ms per graph',
                      title=f'{algorithm}: time per graph ({jax.devices()[0].platform})')
              ax2.legend(fontsize=8)
              for ax in (ax1, ax2):
                  ax.set_xticks(ns, [str(n) for n in ns])
                  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
          fig.tight_layout()
          plt.show()
          """, figure=True),
  ]


def implicit_gradients():
  d = defaults()
  return [
      md(f"""
          {badge('implicit_gradients')}

          # Gradients through a fixed point, solvers and tolerance

          DEAR decodes from H\\* = f(H\\*; θ). Three ways to get the gradient of a
          loss ℓ(H\\*) with respect to θ are implemented in `dear_jax.solver`
          (`dear.grad`):

          - `ift`: the implicit function theorem, dH\\*/dθ = (I − ∂f/∂h)⁻¹ ∂f/∂θ,
            with the adjoint linear system solved by {d['backward']}
            (`dear.backward_solver`): exact at a true fixed point, memory
            independent of the iteration count;
          - `phantom`: backpropagation through a few damped steps
            h ← (1 − τ) h + τ f(h) from H\\* (5 steps, τ = 0.5);
          - `jfb`: the 1-step (Jacobian-free) gradient: only the last
            application of f is differentiated, H\\* is a constant (DEAR's own).

          This project's default (`configs/default.py`) is `{d['grad_key']}`,
          with {d['penalty']}.

          This notebook

          1. compares the three against backpropagation through an unrolled
             solve and against finite differences, on a small model;
          2. plots the residual curves of Anderson acceleration, Broyden's method
             and plain iteration on a trained model;
          3. shows what the stopping tolerance does to the test score and the
             time per graph.
          """),
      SETUP,
      BUDGET,
      md("""
          ## 1. Gradients on a small model

          BFS, hidden size 16 (32 at the default budget), one batch of 4 graphs
          of 8 nodes, randomly initialised parameters. A random processor need
          not be a contraction in h, so we scale the weights that read h (the
          h half of z = [x, h]) by s: s = 0.1 makes f strongly contractive,
          s = 0.3 less so. The forward solve is tight (relative residual 1e-6).

          References:
          - **unrolled**: 500 plain iterations h ← f(h) from h = 0, backpropagated
            through, then DEAR's decoder (what the equilibrium loss is when plain
            iteration has converged);
          - **finite differences**: central differences (ε = 1e-5) of the
            equilibrium loss along 3 random unit directions in the processor's
            parameter space, computed in float64 with 2,000 plain iterations, so
            the differences are not rounding noise.

          What to look at: `ift` should agree with finite differences to about
          1e-4 at every s, and so should the unrolled gradient as long as 500
          plain iterations converge (it drifts when they do not: the less
          contractive f, the more steps it needs; the table gives the forward
          solve's iterations); `phantom` and `jfb` are other directions
          altogether (cosine well below 1): the 1-step gradient drops every path
          through H\\* except the last f application, the price of its constant
          memory and cost. The right panel compares whole gradients by cosine
          similarity with the IFT gradient.
          """),
      code("""
          import dataclasses, functools, time
          import jax.numpy as jnp
          import numpy as np
          import matplotlib.pyplot as plt
          from IPython.display import Markdown, display
          from configs import default
          from dear_jax import (batches as batch_lib, checkpoints, clrs_lib, factory,
                                input_pipeline, losses, solver, splits, train)

          config = default.get_config()
          config.model.hidden = 16 if SMOKE else 32
          config.data.update(train_sizes=(8,), batch_size=4, cache_dir=CACHE)
          batch = next(input_pipeline.TrainStream('bfs', train.data_config(config), seed=0,
                                                  keep_hints=False))
          spec = clrs_lib.processed_spec('bfs')
          KEY = jax.random.PRNGKey(0)
          GRADS = {g: grad.LABEL or g for g, grad in solver.GRADIENTS.items()}
          UNROLL, UNROLL_FD, EPS = 500, 2000, 1e-5
          SCALES = (0.1,) if SMOKE else (0.1, 0.3)
          DIRECTIONS = 3


          def model_with(grad):
              c = config.copy_and_resolve_references()
              c.dear.update(dict(grad=grad, method='anderson', tol=1e-6, tol_mode='rel',
                                 max_iter_train=300, max_iter_eval=300, backward_tol=1e-8,
                                 backward_max_iter=80, phantom_steps=5, phantom_tau=0.5,
                                 jac_reg_weight=0.0))   # the references have no penalty
              return factory.build_model(c, spec, batch)


          models = {g: model_with(g) for g in GRADS}
          ref = models['ift']
          params0 = ref.init(jax.random.PRNGKey(3), batch)


          def contract(params, s):
              \"\"\"Scales the processor's kernels' rows that read h by s.\"\"\"
              h = ref.hidden
              scaled = [0]

              def scale(w):
                  if w.ndim == 2 and w.shape[0] == 2 * h:
                      scaled[0] += 1
                      return w.at[h:].multiply(s)
                  return w
              proc = jax.tree_util.tree_map(scale, params['processor'])
              assert scaled[0] > 0, 'no kernel reads z = [x, h]: processor changed?'
              return dict(params, processor=proc)


          def unrolled_loss(params, steps):
              \"\"\"`steps` plain iterations from h = 0, then DEAR's last step and decoder.\"\"\"
              node, edge, graph, adj = ref.encode(params, batch['inputs'], batch_lib.num_nodes(batch))
              adj = ref.adjacency(batch, adj)
              step = lambda _, h: ref.process(params['processor'], node, edge, graph, adj, h,
                                              triplets=False)[0]
              h = jax.lax.fori_loop(0, steps, step, jnp.zeros_like(node))
              h_new, tri = ref.process(params['processor'], node, edge, graph, adj, h)
              outs, _ = ref.decode(params, node, h, h_new, edge, tri, graph, True, KEY)
              return losses.total_loss(ref.spec, batch, outs)


          # Each returns (gradient, aux); the models' aux holds the solver's statistics.
          grad_fns = {g: jax.jit(jax.grad(lambda p, m=m: m.loss(p, batch, KEY), has_aux=True))
                      for g, m in models.items()}
          unrolled_grad = jax.jit(jax.grad(functools.partial(unrolled_loss, steps=UNROLL)))
          grad_fns['unrolled'] = lambda p: (unrolled_grad(p), None)
          LABELS = dict(GRADS, unrolled=f'unrolled ({UNROLL} steps)')
          flat = lambda tree: jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(tree)])


          loss_fd = jax.jit(functools.partial(unrolled_loss, steps=UNROLL_FD))


          def finite_differences(params, direction):
              with jax.enable_x64(True):
                  to64 = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), t)
                  p, d = to64(params), to64(direction)
                  shift = lambda e: dict(p, processor=jax.tree_util.tree_map(
                      lambda a, b: a + e * b, p['processor'], d))
                  return float((loss_fd(shift(EPS)) - loss_fd(shift(-EPS))) / (2 * EPS))


          table = []
          for s in SCALES:
              params = contract(params0, s)
              grads, aux, ms = {}, {}, {}
              for g, fn in grad_fns.items():
                  grads[g], aux[g] = jax.block_until_ready(fn(params))  # compiles on first use
                  t0 = time.perf_counter()
                  jax.block_until_ready(fn(params))
                  ms[g] = 1e3 * (time.perf_counter() - t0)
              stats = aux['ift']['solver']  # the forward solve (the same for all)
              proc = {g: flat(gr['processor']) for g, gr in grads.items()}
              fd, dd = [], {g: [] for g in grads}
              for i in range(DIRECTIONS):
                  key = jax.random.PRNGKey(100 + i)
                  d = jax.tree_util.tree_map(lambda x: jax.random.normal(key, x.shape),
                                             params['processor'])
                  norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(d)))
                  d = jax.tree_util.tree_map(lambda x: x / norm, d)
                  fd.append(finite_differences(params, d))
                  for g in grads:
                      dd[g].append(float(proc[g] @ flat(d)))
              fd = np.array(fd)
              for g in grads:
                  err = np.sqrt(np.mean((np.array(dd[g]) - fd) ** 2) / np.mean(fd ** 2))
                  cos = float(proc[g] @ proc['ift'] /
                              (jnp.linalg.norm(proc[g]) * jnp.linalg.norm(proc['ift'])))
                  table.append(dict(s=s, grad=g, err=err, cos=cos, ms=ms[g],
                                    iters=float(np.mean(stats.iterations)),
                                    converged=bool(np.all(stats.converged))))

          display(Markdown(
              '| s | gradient | rel. error vs finite differences | cosine with IFT | ms per gradient '
              '| forward iterations (mean) |\\n|---|---|---|---|---|---|\\n' + '\\n'.join(
                  f'| {r["s"]} | {LABELS[r["grad"]]} | {r["err"]:.2e} | {r["cos"]:.4f} | '
                  f'{r["ms"]:.1f} | {r["iters"]:.1f}{"" if r["converged"] else " (not converged)"} |'
                  for r in table)))

          fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
          width = 0.8 / len(SCALES)
          x = np.arange(len(LABELS))
          for i, s in enumerate(SCALES):
              rows = [r for r in table if r['s'] == s]
              off = (i - (len(SCALES) - 1) / 2) * width
              ax1.bar(x + off, [r['err'] for r in rows], width, label=f's = {s}')
              ax2.bar(x + off, [r['cos'] for r in rows], width, label=f's = {s}')
          ax1.set(yscale='log', xticks=x, xticklabels=[LABELS[g] for g in LABELS],
                  ylabel='relative error of directional derivatives',
                  title='Against finite differences (float64)')
          ax2.set(xticks=x, xticklabels=[LABELS[g] for g in LABELS], ylim=(min(0, ax2.get_ylim()[0]), 1.05),
                  ylabel='cosine similarity', title='Whole processor gradient vs the IFT gradient')
          for ax in (ax1, ax2):
              ax.legend(title='contraction scale')
          fig.tight_layout()
          plt.show()
          """, figure=True),
      md("""
          ## 2. Residual curves of Anderson, Broyden and plain iteration

          A DEAR model trained on BFS with `configs/default.py` (500 steps; a
          few minutes), then, on the first test batch (graphs of 64 nodes), the
          relative residual after each f evaluation of each solver, run past the
          tolerance: median over graphs, with the band between the 25th and 75th
          percentiles.

          What to look at: how many evaluations each method needs to reach the
          training tolerance (dashed), and how low each gets: Anderson and
          Broyden extrapolate from past iterates and usually need fewer
          evaluations than plain iteration, as long as the map is smooth enough.
          """),
      code("""
          train_config = default.get_config()
          train_config.model_kind = 'dear'
          if SMOKE:
              shrink(train_config)
          workdir = os.path.join(WORK, 'implicit_gradients_bfs_dear')
          shutil.rmtree(workdir, ignore_errors=True)
          results = train.train_and_evaluate(train_config, workdir, 'bfs', progress=not SMOKE)
          print(f'test score {results["test_score"]:.3f}, '
                f'{results["solver_iters_mean"]:.1f} solver iterations per test graph')

          test_set = splits.load_split('bfs', 'test', train.data_config(train_config),
                                       keep_hints=False)
          test_batch = test_set.batches[0]
          graphs = min(test_set.num_samples, len(test_batch['lengths']))
          trained = factory.build_model(train_config, spec, test_batch)
          params = checkpoints.load_best_params(workdir)
          EVALUATIONS = 12 if SMOKE else 80


          @functools.partial(jax.jit, static_argnums=2)
          def residuals(params, batch, solver_cfg):
              f, h0, args = trained.equilibrium(params, batch, training=False, key=None)
              return solver.residual_history(f, h0, params['processor'], args,
                                             config=solver_cfg, evaluations=EVALUATIONS)


          base = trained.solver_cfg
          # Every registered solver (dear_jax.solver.SOLVERS), undamped.
          methods = {solver.SOLVERS[m].LABEL or m: dataclasses.replace(base, method=m, damping=1.0)
                     for m in solver.SOLVERS}
          fig, ax = plt.subplots(figsize=(7.5, 4.4))
          x = np.arange(1, EVALUATIONS + 1)
          for (label, cfg), color in zip(methods.items(), plt.cm.tab10.colors):
              curves = np.asarray(residuals(params, test_batch, cfg))[:graphs]
              lo, mid, hi = np.nanpercentile(curves, [25, 50, 75], axis=0)
              ax.fill_between(x, lo, hi, color=color, alpha=0.2)
              ax.plot(x, mid, color=color, lw=2, label=label)
          ax.axhline(base.tol, ls='--', color='k', label=f'training tolerance {base.tol:g}')
          ax.set(yscale='log', xlabel='f evaluations',
                 ylabel=dict(rel='relative residual ‖f(h) − h‖ / ‖f(h)‖',
                             abs='residual ‖f(h) − h‖')[base.tol_mode],
                 title=f'bfs: residual on {graphs} test graphs '
                       f'(n={batch_lib.num_nodes(test_batch)}), median and 25-75%')
          ax.legend(fontsize=8)
          plt.show()
          """, figure=True),
      md(f"""
          ## 3. What the tolerance does to the score and the time

          The same trained parameters, evaluated on the whole test split with
          the solver stopped at different relative tolerances (cap raised to
          200 evaluations). Training used {d['tol']}, the default.

          What to look at: if the score **changes** when the tolerance tightens,
          the model's answers depend on where the solver stops, i.e. training
          found a useful early iterate rather than a fixed point
          (docs/equilibrium.md); the time per graph follows the iteration
          count. Graphs that hit the cap are counted as not converged.
          """),
      code("""
          TOLS = (1e-1, 1e-2) if SMOKE else (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
          CAP = 20 if SMOKE else 200
          rows = []
          for tol in TOLS:
              c = train_config.copy_and_resolve_references()
              c.dear.tol, c.dear.max_iter_eval = tol, CAP
              m = factory.build_model(c, spec, test_batch)
              predict = jax.jit(m.predict)
              jax.block_until_ready(predict(params, test_batch))  # compile outside the timing
              t0 = time.perf_counter()
              r = train.evaluate(m, predict, params, test_set)
              seconds = time.perf_counter() - t0
              rows.append(dict(tol=tol, score=r['score'], iters=r['solver_iters_mean'],
                               nonconv=r['nonconverged_fraction'],
                               ms=1e3 * seconds / test_set.num_samples))

          display(Markdown('| tolerance | test score | iterations (mean) | not converged '
                           '| ms per graph |\\n|---|---|---|---|---|\\n' + '\\n'.join(
              f'| {r["tol"]:g} | {r["score"]:.4f} | {r["iters"]:.1f} | '
              f'{100 * r["nonconv"]:.0f}% | {r["ms"]:.2f} |' for r in rows)))

          fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
          tols = [r['tol'] for r in rows]
          ax1.plot(tols, [r['score'] for r in rows], 'o-', color='tab:red')
          ax1.axvline(train_config.dear.tol, ls=':', color='k', label='training tolerance')
          ax1.set(xscale='log', xlabel='relative tolerance (tighter →)', ylabel='test score',
                  title='bfs: test score vs stopping tolerance')
          ax1.invert_xaxis()
          ax1.legend(fontsize=8)
          ax2.plot(tols, [r['ms'] for r in rows], 'o-', color='tab:red', label='ms per graph')
          ax2.set(xscale='log', xlabel='relative tolerance (tighter →)',
                  ylabel='inference ms per graph', title='bfs: time and iterations vs tolerance')
          ax2.invert_xaxis()
          ax3 = ax2.twinx()
          ax3.plot(tols, [r['iters'] for r in rows], 's--', color='tab:gray', label='iterations (mean)')
          ax3.set_ylabel('solver iterations (mean)')
          handles = ax2.get_legend_handles_labels()[0] + ax3.get_legend_handles_labels()[0]
          ax2.legend(handles=handles, loc='upper left', fontsize=8)
          fig.tight_layout()
          plt.show()
          """, figure=True),
  ]


def results_notebook():
  return [
      md(f"""
          {badge('results')}

          # Committed results, plotted

          No training: this notebook reads what the repository holds.

          - **Comparisons** under `results/`: every folder written by
            `python -m baselines.compare --out=results/NAME ...` (it holds
            `results.csv`, `results.md`, `protocol.json` and `runs/*/*/s*/results.json`).
          - **Benchmarks**: `benchmarks/results/results.json`, written by
            `python -m benchmarks.run` (speed and memory of DEAR against the
            stepwise NAR, untrained models).

          When `results/` holds no comparison yet, the comparison part says so
          and is skipped; under the smoke budget (`DEAR_JAX_NOTEBOOK_SMOKE=1`,
          CI) it makes a tiny one in a temporary folder instead, so that its
          plotting code runs (it reuses `dear_vs_stepwise.ipynb`'s smoke runs
          when that notebook ran first in the same temporary folder).
          """),
      SETUP,
      BUDGET,
      code("""
          import csv, glob, json
          import numpy as np
          import matplotlib.pyplot as plt
          import matplotlib.ticker
          from IPython.display import Markdown, display
          from baselines import compare, plots, report, variants  # noqa: F401  (plots: Agg)
          %matplotlib inline
          """, SMOKE_COMPARE, """

          RESULTS = os.path.join(REPO_DIR, 'results') if REPO_DIR else None
          BENCHMARK = (os.path.join(REPO_DIR, 'benchmarks', 'results', 'results.json')
                       if REPO_DIR else None)
          comparisons = sorted(
              os.path.dirname(p) for p in glob.glob(
                  os.path.join(RESULTS or '', '**', 'results.csv'), recursive=True)
              if RESULTS and os.path.exists(os.path.join(os.path.dirname(p), 'protocol.json')))
          if comparisons:
              print('comparisons:', *[os.path.relpath(c, REPO_DIR) for c in comparisons], sep='\\n  ')
          else:
              print('results/ holds no comparison yet; write one with\\n'
                    '  python -m baselines.compare --out=results/NAME ...')
              if SMOKE:
                  out = os.path.join(WORK, 'compare_smoke')
                  assert compare.main(smoke_compare_args(out)) == 0
                  comparisons = [out]
                  print('smoke budget: plotting a tiny comparison made in', out)
          """),
      md("""
          ## 1. Comparisons

          For each comparison: its settings and tables (`results.md`), then

          - test score per algorithm and model (mean over seeds, bars: min to
            max), the published Triplet-GMPNN score as a black diamond: is DEAR
            within the stepwise models' range, and how far are all from the
            published 10,000-step numbers;
          - steady-state training steps per second and inference time per test
            graph (log scales): where DEAR's speed comes from;
          - DEAR's solver iterations against the true steps of each test graph;
          - validation score during training, per model.
          """),
      code("""
          def number(x):
              try:
                  return float(x)
              except (TypeError, ValueError):
                  return np.nan


          def show_comparison(out):
              with open(os.path.join(out, 'protocol.json')) as f:
                  info = json.load(f)['info']
              with open(os.path.join(out, 'results.csv')) as f:
                  rows = list(csv.DictReader(f))
              runs = []
              for path in sorted(glob.glob(os.path.join(out, 'runs', '*', '*', 's*', 'results.json'))):
                  with open(path) as f:
                      runs.append(json.load(f))
                  # the compared model's name (nar_nohint's results.json says 'nar')
                  runs[-1]['compared'] = os.path.basename(os.path.dirname(os.path.dirname(path)))
              display(Markdown(f'### {os.path.basename(out)}'))
              with open(os.path.join(out, 'results.md')) as f:
                  display(Markdown(f.read().split('\\n', 1)[1]))  # without its title
              algorithms = sorted({r['algorithm'] for r in rows})
              models = [m for m in compare.MODELS if any(r['model'] == m for r in rows)]
              color = lambda m: variants.colours().get(m, 'gray')
              width = 0.8 / len(models)
              x = np.arange(len(algorithms))

              def bars(ax, key, scale=1.0):
                  for i, m in enumerate(models):
                      vals = [[scale * number(r[key]) for r in rows
                               if r['algorithm'] == a and r['model'] == m] for a in algorithms]
                      mean = np.array([np.nanmean(v) if v else np.nan for v in vals])
                      lo = np.array([np.nanmin(v) if v else np.nan for v in vals])
                      hi = np.array([np.nanmax(v) if v else np.nan for v in vals])
                      ax.bar(x + (i - (len(models) - 1) / 2) * width, mean, width,
                             yerr=[mean - lo, hi - mean], capsize=3, color=color(m), label=m)
                  ax.set_xticks(x, algorithms, rotation=30 if len(algorithms) > 3 else 0)

              fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(algorithms) * len(models) / 2 + 2), 4))
              bars(ax, 'test_score', 100)
              ax.scatter(x, [report.PUBLISHED_TRIPLET_GMPNN.get(a, (np.nan,))[0] for a in algorithms],
                         marker='D', color='k', zorder=5, label=report.PUBLISHED_LABEL + ', published')
              ax.set(ylabel='test score (%, official OOD test split)', ylim=(0, 105),
                     title=f'{os.path.basename(out)}: test score per algorithm')
              ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
              plt.show()

              fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
              bars(ax1, 'train_steps_per_second')
              ax1.set(yscale='log', ylabel='training steps / s (steady state)',
                      title='Training speed')
              bars(ax2, 'eval_seconds_per_graph', 1e3)
              ax2.set(yscale='log', ylabel='inference ms per test graph', title='Inference time')
              ax2.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
              fig.tight_layout()
              plt.show()

              dear = [r for r in runs if r['compared'] == 'dear' and 'solver_iterations' in r]
              if dear:
                  fig, ax = plt.subplots(figsize=(6.5, 4))
                  rng = np.random.default_rng(0)
                  for i, a in enumerate(algorithms):
                      steps = np.concatenate([r['test_algo_steps'] for r in dear if r['algorithm'] == a] or [[]])
                      iters = np.concatenate([r['solver_iterations'] for r in dear if r['algorithm'] == a] or [[]])
                      ax.scatter(steps + rng.uniform(-0.2, 0.2, len(steps)),
                                 iters + rng.uniform(-0.2, 0.2, len(iters)),
                                 s=12, alpha=0.6, color=f'C{i}', label=a)
                  top = max(max(r['test_algo_steps'] + r['solver_iterations']) for r in dear)
                  ax.plot([0, top], [0, top], 'k--', lw=1, label='one iteration per step')
                  ax.set(xlabel='true algorithm steps', ylabel='DEAR solver iterations',
                         title='DEAR iterations vs true steps, per test graph')
                  ax.legend(fontsize=8)
                  plt.show()

              fig, axes = plt.subplots(1, len(algorithms), figsize=(4.5 * len(algorithms), 3.4),
                                       squeeze=False)
              for ax, a in zip(axes[0], algorithms):
                  for r in runs:
                      if r['algorithm'] == a and r.get('val_curve'):
                          s, v = zip(*r['val_curve'])
                          ax.plot(s, v, 'o-', ms=3, color=color(r['compared']), alpha=0.8,
                                  label=f'{r["compared"]}, seed {r["seed"]}')
                  ax.set(xlabel='training step', ylabel='validation score', title=f'{a}: validation')
                  ax.legend(fontsize=7)
              fig.tight_layout()
              plt.show()


          for out in comparisons:
              show_comparison(out)
          if not comparisons:
              print('no comparison to plot')
          """, figure=True),
      md("""
          ## 2. Benchmarks (`benchmarks/results/results.json`)

          Untrained models with the same Triplet-GMPNN processor (hidden 128):

          - inference time per graph of DEAR and of the stepwise NAR against the
            graph size n, per algorithm (log scales; the label gives NAR / DEAR at
            the largest n). Untrained DEAR stops after a few iterations
            everywhere, so the ratio mostly follows the NAR's step count;
          - XLA's compiled memory of one training step at n=64: the NAR's scan
            keeps every step's activations, DEAR's memory does not grow with its
            iteration count (1-step and IFT gradients).
          """),
      code("""
          if BENCHMARK and os.path.exists(BENCHMARK):
              with open(BENCHMARK) as f:
                  bench = json.load(f)
              print(f'{bench["mode"]} mode, {bench["date"]}: {bench["hardware"]}')
              inference = bench['inference']
              algorithms = list(dict.fromkeys(r['algorithm'] for r in inference))
              fig, ax = plt.subplots(figsize=(7, 4.2))
              for i, a in enumerate(algorithms):
                  rs = [r for r in inference if r['algorithm'] == a]
                  ns = [r['n'] for r in rs]
                  ax.plot(ns, [1e3 * r['nar_seconds_per_graph'] for r in rs], 'o-', color=f'C{i}',
                          label=f'{a}: stepwise NAR ({rs[-1]["ratio_nar_over_dear"]:.1f}x DEAR at n={ns[-1]})')
                  ax.plot(ns, [1e3 * r['dear_seconds_per_graph'] for r in rs], 's--', color=f'C{i}',
                          label=f'{a}: DEAR')
              ax.set(xscale='log', yscale='log', xlabel='graph size n',
                     ylabel='inference ms per graph', title='Inference time per graph (untrained models)')
              ns = sorted({r['n'] for r in inference})
              ax.set_xticks(ns, [str(n) for n in ns])
              ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
              ax.legend(fontsize=7)
              plt.show()

              memory = bench.get('memory', [])
              if memory:
                  keys = [('nar_mb', 'stepwise NAR', 'tab:blue'), ('dear_jfb_mb', 'DEAR, 1-step gradient', 'tab:red'),
                          ('dear_ift_mb', 'DEAR, IFT gradient', 'tab:orange')]
                  fig, ax = plt.subplots(figsize=(7, 4))
                  x = np.arange(len(memory))
                  for i, (k, label, c) in enumerate(keys):
                      ax.bar(x + (i - 1) * 0.27, [number(r.get(k)) for r in memory], 0.27, color=c, label=label)
                  ax.set_xticks(x, [f'{r["algorithm"]} ({r["nar_steps"]} steps)' for r in memory])
                  ax.set(yscale='log', ylabel='compiled train-step memory (MB)',
                         title=f'One training step, n={memory[0]["n"]}, batch {memory[0]["batch"]}')
                  ax.legend(fontsize=8)
                  plt.show()
          else:
              print('no benchmarks/results/results.json next to this notebook')
          """, figure=True),
  ]


def pretrained_notebook():
  return [
      md(f"""
          {badge('pretrained')}

          # Stored models: tested without training

          The repository keeps the best parameters of the DEAR-10 study's
          seed-0 runs of `dear` and `dear_paper` under `pretrained/` (parameters
          only, with the run's config and a checksum; `pretrained/README.md`
          lists them). This notebook trains nothing: it loads each stored model
          and tests it on graphs larger than any it was trained on (training
          sizes up to 16 nodes), as `python -m dear_jax.pretrained
          --model=pretrained/ALGORITHM/MODEL --n=N` does, then plots

          1. the test score against the number of nodes n, per stored model;
          2. DEAR's solver iterations against n, beside the algorithm's true
             number of steps, which a stepwise reasoner must run.

          Graphs of each size are drawn as the official test split is (its
          sampler and seed), so every model sees the same ones.
          """),
      SETUP,
      BUDGET,
      code("""
          import glob
          import matplotlib.pyplot as plt
          import numpy as np
          from dear_jax import pretrained
          %matplotlib inline

          STORED = os.path.join(REPO_DIR, 'pretrained') if REPO_DIR else None
          models = sorted(os.path.dirname(p) for p in glob.glob(
              os.path.join(STORED or '', '*', '*', pretrained.MODEL)))
          print('stored models:', *[os.path.relpath(m, STORED) for m in models],
                sep='\\n  ')
          # Sizes and graphs per size: a few minutes on a CPU for a model.
          SIZES, GRAPHS = ((8, 16), 2) if SMOKE else ((64, 128, 256), 8)
          if SMOKE:
              models = models[:1]
          """),
      md("""
          ## 1. Test score against n

          Each stored model on `GRAPHS` test graphs of each size (the study
          itself used 16; its own figures are in `results/dear10/`). The bars
          are 95 % t intervals over the graphs' own scores.
          """),
      code("""
          from scipy import stats

          tested = {}
          for folder in models:
              name = os.path.relpath(folder, STORED)
              tested[name] = [pretrained.evaluate(folder, 'test', n, GRAPHS, cache_dir=CACHE)
                              for n in SIZES]
              for r in tested[name]:
                  print(pretrained._line(r))

          fig, ax = plt.subplots(figsize=(6, 3.5))
          for name, rows in tested.items():
              means, halves = [], []
              for r in rows:
                  g = np.asarray(r['graph_scores'])
                  means.append(100 * g.mean())
                  halves.append(100 * stats.t.ppf(0.975, len(g) - 1) * g.std(ddof=1)
                                / np.sqrt(len(g)) if len(g) > 1 else 0)
              ax.errorbar(SIZES, means, yerr=halves, marker='o', capsize=3, label=name)
          ax.set_xscale('log', base=2)
          ax.set_xticks(SIZES, [str(n) for n in SIZES])
          ax.set_xlabel('nodes n (test)')
          ax.set_ylabel('test score (%)')
          ax.legend(fontsize=8)
          plt.show()
          """, figure=True),
      md("""
          ## 2. Iterations against n

          DEAR's solver stops when the state stops changing; a stepwise
          reasoner runs one step per algorithm step. Where the true steps grow
          with n and the iterations do not, DEAR's work per graph grows more
          slowly.
          """),
      code("""
          fig, ax = plt.subplots(figsize=(6, 3.5))
          for name, rows in tested.items():
              if 'solver_iters_mean' in rows[0]:
                  ax.plot(SIZES, [r['solver_iters_mean'] for r in rows], marker='o',
                          label=f'{name}: solver iterations')
              ax.plot(SIZES, [r['algo_steps_mean'] for r in rows], ls='--', color='gray',
                      label=f'{name.split("/")[0]}: true steps')
          ax.set_xscale('log', base=2)
          ax.set_xticks(SIZES, [str(n) for n in SIZES])
          ax.set_xlabel('nodes n (test)')
          ax.set_ylabel('per graph (mean)')
          ax.legend(fontsize=8)
          plt.show()
          """, figure=True),
  ]


NOTEBOOKS = {
    'quickstart': quickstart,
    'dear_vs_stepwise': dear_vs_stepwise,
    'implicit_gradients': implicit_gradients,
    'results': results_notebook,
    'pretrained': pretrained_notebook,
}


def build(name: str):
  nb = nbformat.v4.new_notebook(cells=NOTEBOOKS[name]())
  nb.metadata = {
      'kernelspec': {'name': 'python3', 'display_name': 'Python 3',
                     'language': 'python'},
      'language_info': {'name': 'python'},
      'colab': {'name': f'{name}.ipynb', 'provenance': []},
      'accelerator': 'GPU',
  }
  # Stable cell ids, so regenerating an unchanged notebook changes nothing.
  for i, cell in enumerate(nb.cells):
    cell['id'] = f'{name[:20]}-{i:02d}'
  nbformat.validate(nb)
  return nb


def readme_badges(text: str) -> str:
  """README.md's text with its Colab badges pointing at GITHUB_REPO."""
  return re.sub(r'(colab\.research\.google\.com/github/)[\w.-]+/[\w.-]+/',
                lambda m: f'{m[1]}{GITHUB_REPO}/', text)


def main(argv) -> int:
  names = argv[1:] or list(NOTEBOOKS)
  for name in names:
    path = os.path.join(HERE, f'{name}.ipynb')
    with open(path, 'w') as f:
      nbformat.write(build(name), f)
    print(path)
  readme = os.path.join(os.path.dirname(HERE), 'README.md')
  with open(readme) as f:
    text = f.read()
  if readme_badges(text) != text:
    with open(readme, 'w') as f:
      f.write(readme_badges(text))
    print(readme)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
