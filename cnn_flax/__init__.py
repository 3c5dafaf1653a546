"""cnn_flax: the networks of the 'CNN Architectures II' deck as Flax Linen modules, with a training engine.

Packages, each importing only those listed before it (and `errors`, `atomic`):
  models      Linen modules and the registry; imports nothing else of cnn_flax.
  data        arrays in, batches out; knows nothing of models or training.
  evaluation  rank-k, reports and figures from logits and labels.
  training    state, steps, optimizers, schedules, parallelism, checkpoints, history, progress reporting.
  pretrained  Keras .h5 weights, caffe preprocessing, top-k predictions.

The orchestration modules are the only ones that see all the packages:
  experiment  a config turned into data source, model, schedule, optimizer, parallel setup, initial weights;
  engine      the experiment on the devices: batches, compiled steps (and their compile counts), RunFiles;
  evaluator   validation and the final report from a set of variables, without any training machinery;
  train       Trainer (the engine with an optimizer and a train step), fit, TrainResult, train_and_evaluate;
  loop        the epoch loop and its Hook protocol; hooks: what every run does around the loop;
  modes, benchmark, ablation   the launcher's other modes (launch.py calls one function per mode).
"""

__version__ = "0.1.0"
