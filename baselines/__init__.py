"""Reference baselines run on exactly the same data as dear_jax."""
