"""Default preset: the project's defaults, sized for a 2-core CPU (a BFS run
finishes in minutes).

The values are the typed sections' dataclass defaults, the one place they are
written (DataConfig in dear_jax/input_pipeline.py, ModelConfig in model.py,
NarConfig in nar.py, DearConfig in dear.py with solver.py's SolverConfig,
TrainConfig in run_config.py; each field's comment says what it does). Other
presets hold only their differences (configs/dear_paper.py). Override any key
with --config.SECTION.KEY=VALUE; unknown keys are rejected.
"""

from dear_jax import run_config


def get_config():
  return run_config.RunConfig().to_config_dict()
