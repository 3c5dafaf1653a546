"""cnn_flax: the networks of the 'CNN Architectures II' deck as Flax Linen modules, with a training engine.

Packages and their one-way imports:
  models      Linen modules and the registry; imports nothing else of cnn_flax.
  data        arrays in, batches out; knows nothing of models or training.
  training    state, steps, optimizers, schedules, parallelism, checkpoints, logging.
  evaluation  rank-k, reports and figures from logits and labels.
  train       the orchestration: the only module that sees all four.
"""

__version__ = "0.1.0"
