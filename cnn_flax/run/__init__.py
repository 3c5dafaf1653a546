"""A config turned into a run: the layer that sees every package below it.

  experiment   config -> data source, model, schedule, optimizer, parallel setup, initial weights;
               the one place where epochs become steps (and the rate plan --mode=summary prints)
  engine       the experiment on the devices: batches and compiled steps (with their compile counts)
  train        Trainer (the engine with an optimizer and a train step), fit, train_and_evaluate
  evaluator    validation and the final report from a set of variables, without training machinery
  modes        summary, prepare, evaluate, predict for launch.py
  predict      the one path from image files to ranked classes (Flax models, Keras's VGGs, export folders)
  export       --mode=export: a run's weights into an export folder
  ablation     the deck's extensions trained side by side;  report_page: report.html from a workdir
  config_args  --config.KEY=VALUE checks made before absl parses them
  supervisor   a multi-host run that loses a process: the others end with one line saying how to resume
"""
