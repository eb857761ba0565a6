"""Default preset: sized for a 2-core CPU (a BFS run finishes in minutes).

Model-independent sections (data, model, train) plus one section per model:
`nar` (stepwise CLRS baseline) and `dear` (equilibrium solver settings).
Override any key with --config.SECTION.KEY=VALUE; unknown keys are rejected.
Each section is read through a typed dataclass that checks it (DataConfig in
dear_jax/input_pipeline.py, ModelConfig in model.py, NarConfig in nar.py,
DearConfig in dear.py with solver.py's SolverConfig, TrainConfig in train.py).
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
  c = ml_collections.ConfigDict()
  c.model_kind = 'dear'  # 'dear' | 'nar'; --model sets it

  c.data = ml_collections.ConfigDict(dict(
      train_sizes=(4, 7, 11, 13, 16),  # CLRS run.py mixture
      size_schedule='cycle',           # 'cycle' (run.py) | 'uniform' (DEAR)
      batch_size=32,
      val_length=16,
      test_length=64,
      # None: the official count (val 64, test 32, x the algorithm's
      # multiplier); a placeholder so --config.data.val_num_samples=64 parses.
      val_num_samples=placeholder(int),
      test_num_samples=placeholder(int),
      eval_batch_size=32,
      cache_dir='~/.cache/dear_jax/datasets',
      # Record the training batches under cache_dir once and replay them:
      # runs with the same data settings and seed then see identical batches.
      recorded_stream=False,
      # binary_search only: DEAR's BetterSearchSampler, no target above every
      # element (CLRS clamps that answer to n-1). Changes train, val and test
      # data and their cache keys; the test split is then no longer CLRS's.
      better_search=False,
      # After the official test: the best parameters on fresh CLRS test sets
      # of these sizes (DEAR: 128,256,512), extra_test_num_samples graphs
      # each; results.json 'extra_tests'. Evaluation batches shrink with n.
      extra_test_lengths=(),
      extra_test_num_samples=100,
  ))

  c.model = ml_collections.ConfigDict(dict(
      processor='triplet_gmpnn',  # 'triplet_gmpnn' (CLRS) | 'gmpnn' (DEAR's)
      hidden=128,
      nb_triplet_fts=8,
      encoder_init='xavier_on_scalars',
  ))

  c.nar = ml_collections.ConfigDict(dict(
      hint_mode='encoded_decoded',  # 'encoded_decoded' | 'decoded_only' | 'none'
      # DEAR's NAR (LT) (hint_mode 'none' only): a head learns when to stop;
      # tests run until it says stop, told no step count, capped at
      # ceil(max_steps_factor * n) steps (6: above every DEAR algorithm's
      # true count, SCC's ~6n the longest). results.json reports the steps.
      learn_termination=False,
      max_steps_factor=6.0,
  ))

  # DEAR's equilibrium settings, chosen by the screen in results/equilibrium
  # (README, "Equilibrium"): a relative tolerance tight enough that the score
  # does not move when the solve goes on, the implicit gradient, and a
  # Jacobian penalty that makes the answer a fixed point.
  c.dear = ml_collections.ConfigDict(dict(
      method='anderson',     # 'anderson' | 'fixed_point' | 'broyden'
      max_iter_train=40,
      max_iter_eval=100,
      tol=1e-3,              # DEAR's release: 0.1 (certifies little, see README)
      tol_mode='rel',        # 'rel' | 'abs'
      anderson_history=6,
      anderson_ridge=1e-4,   # relative to the history's mean squared residual
      anderson_ridge_relative=True,
      anderson_beta=1.0,
      damping=1.0,
      grad='ift',            # 'ift' | 'phantom' | 'jfb' (DEAR's release: jfb)
      phantom_steps=5,
      phantom_tau=0.5,
      backward_solver='anderson',  # 'anderson' | 'gmres' | 'bicgstab'
      backward_tol=1e-3,     # relative residual of the adjoint solve
      backward_max_iter=40,
      # Hutchinson ||J||_F^2 penalty: makes the trained map contract. On the
      # five-algorithm panel (live stream, seeds 0 and 1) 0.1 converged every
      # test graph (0.01 left 3-13 % of MST-Prim's unconverged, 15 % from
      # H*), at mean scores equal within seed noise. README, "Equilibrium".
      # DEAR: 1e-4.
      jac_reg_weight=0.1,
      state_noise=0.0,       # std of a Gaussian perturbation of f (training)
      init_state_std=0.0,    # training solves start from N(0, std^2), not 0
      gate_bias=0.0,         # initial update-gate bias (CLRS's NAR: -3)
      spectral_norm=False,   # processor kernels W / max(1, sigma_max(W))
      # DEAR's stochastic extra iterations (training only): past the answer,
      # K more f steps with gradient, P(K >= k) = alpha^k, K <= max_steps;
      # alpha = stochastic_alpha * stochastic_decay^step. 0: off (DEAR: 0.1).
      stochastic_alpha=0.0,
      stochastic_decay=0.998,
      stochastic_max_steps=9,
      # CGP: a second pass over the smallest SL(2, Z_p) Cayley graph with >= n
      # nodes (virtual nodes appended) inside every f evaluation. Shared
      # weights reuse the processor (model.processor='gmpnn' only); else a
      # separate gated max-MPNN (DEAR's deq_cgp.yaml shares, config.yaml not).
      cgp=False,
      cgp_shared_weights=False,
      # DEAR's alignment loss (training only): the solver's trajectory and
      # answer pulled towards a frozen teacher's per-step states, times
      # align_weight (DEAR: 0.01; 0: off). align_teacher: the workdir of a
      # finished --model=nar --hint_mode=none run of the same algorithm and
      # hidden size. align_samples: trajectory states aligned per graph.
      align_weight=0.0,
      align_teacher=placeholder(str),
      align_samples=1,
      # After the test: is the answer a fixed point? (dear_jax/diagnostics.py)
      diagnostics=True,
      check_tol=1e-5,        # reference: the solve continued to this relative tol
      check_max_iter=1000,   # ... within this many evaluations from H0
      # Checks on the first K test graphs (0: all). The checks cost up to
      # check_max_iter iterations per batch: on the 2048-graph
      # test sets (binary_search, minimum, sorting) a CPU may take hours.
      check_graphs=0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=500,
      learning_rate=1e-3,
      grad_clip=1.0,
      eval_every=50,
      seed=0,
      # Split every training batch over all local devices (jax.sharding mesh;
      # batch_size must be a multiple of the device count). Same results to
      # float tolerance, so a finished run stays finished when it changes.
      data_parallel=False,
  ))
  return c
