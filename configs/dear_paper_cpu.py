"""configs/dear_paper.py's model at the 2-core CPU study's budget.

The same processor, solver, gradient, penalty and learning rate as DEAR's
release; the data and step budget of compare's dear10-cpu preset (1,000
steps, validation every 100, configs/default.py's training sizes 4..16 in
CLRS run.py's cycle), so it sits beside the other models of that sweep
(compare's model `dear_paper` is this config under the sweep's settings).
"""

from dear_jax import validation


def get_config():
  c = validation.preset('dear_paper')
  c.data = validation.preset('default').data
  c.train.steps = 1000
  c.train.eval_every = 100
  return c
