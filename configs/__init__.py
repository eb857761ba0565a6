"""The presets, by name: --config=NAME (a checkout's configs/, installed as
dear_jax.configs). A preset builds on another with
dear_jax.validation.preset(NAME)."""
