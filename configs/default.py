"""Default preset: sized for a 2-core CPU (a BFS run finishes in minutes).

Model-independent sections (data, model, train) plus one section per model:
`nar` (stepwise CLRS baseline) and `dear` (equilibrium solver settings).
Override any key with --config.SECTION.KEY=VALUE; unknown keys are rejected.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.model_kind = 'dear'  # 'dear' | 'nar'; --model sets it

  c.data = ml_collections.ConfigDict(dict(
      train_sizes=(4, 7, 11, 13, 16),  # CLRS run.py mixture
      size_schedule='cycle',           # 'cycle' (run.py) | 'uniform' (DEAR)
      batch_size=32,
      val_length=16,
      test_length=64,
      val_num_samples=0,   # 0: official count (64 x multiplier)
      test_num_samples=0,  # 0: official count (32 x multiplier)
      eval_batch_size=32,
      cache_dir='~/.cache/dear_jax/datasets',
  ))

  c.model = ml_collections.ConfigDict(dict(
      processor='triplet_gmpnn',  # 'triplet_gmpnn' (CLRS) | 'gmpnn' (DEAR's)
      hidden=128,
      nb_triplet_fts=8,
      encoder_init='xavier_on_scalars',
  ))

  c.nar = ml_collections.ConfigDict(dict(
      hint_mode='encoded_decoded',  # 'encoded_decoded' | 'decoded_only' | 'none'
  ))

  c.dear = ml_collections.ConfigDict(dict(
      method='anderson',     # 'anderson' | 'fixed_point' | 'broyden'
      max_iter_train=40,
      max_iter_eval=40,
      tol=0.1,
      tol_mode='rel',        # 'rel' | 'abs'
      anderson_history=6,
      anderson_ridge=1e-4,
      anderson_beta=1.0,
      damping=1.0,
      grad='jfb',            # 'ift' | 'phantom' | 'jfb'
      phantom_steps=5,
      phantom_tau=0.5,
      backward_solver='gmres',  # 'gmres' | 'bicgstab'
      backward_tol=1e-6,
      backward_max_iter=20,
      jac_reg_weight=0.0,    # DEAR: 1e-4
      state_noise=0.0,       # std of a Gaussian perturbation of f (training)
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=500,
      learning_rate=1e-3,
      grad_clip=1.0,
      eval_every=50,
      seed=0,
  ))
  return c
