"""dear_jax: Deep Equilibrium Algorithmic Reasoning on CLRS-30 in JAX/Flax.

Importing the package is cheap; dm-clrs (and TensorFlow) load only when data is
first needed.
"""

__version__ = '0.1.0'

# config.model_kind / --model: the reasoners factory.build_model builds.
MODEL_KINDS = ('dear', 'nar')
