"""Adaptive temperature (Velickovic, Perivolaropoulos, Barbero, Pascanu
2024, "softmax is not enough"): a softmax over many items disperses; at test
time an inverse temperature chosen from its entropy sharpens it again.

Only softmaxes whose output feeds further computation can change a score
this way (the processors' softmax aggregation, the Sinkhorn permutation
decoder): an output scored by its argmax does not move when its logits are
scaled. docs/sharper.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Inverse temperature against entropy (nats), highest power first: the
# paper's quartic fit, applied where the entropy exceeds ENTROPY_THRESHOLD,
# never below 1.
ADAPTIVE_POLY = (-0.037, 0.481, -2.3, 4.917, -1.791)
ENTROPY_THRESHOLD = 0.5


def adaptive_inverse_temperature(logits: jax.Array, axis: int) -> jax.Array:
  """beta of each softmax along `axis` (kept as a size-1 axis): from the
  entropy H of softmax(logits), beta = max(poly(H), 1) where H > 0.5, else
  1. In float32 (a coarse H moves beta). Entries masked with a large
  negative logit get probability 0 and add nothing to H. No stop-gradient,
  as in the paper's listing."""
  logits = logits.astype(jnp.float32)
  p = jax.nn.softmax(logits, axis=axis)
  entropy = -jnp.sum(p * jnp.log(p + 1e-9), axis=axis, keepdims=True)
  beta = jnp.maximum(jnp.polyval(jnp.asarray(ADAPTIVE_POLY, jnp.float32),
                                 entropy), 1.0)
  return jnp.where(entropy > ENTROPY_THRESHOLD, beta, 1.0)
