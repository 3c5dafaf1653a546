"""How fast and how large: every benchmark of the project, its profiles, the comparison peers and the table.

  model      --mode=benchmark: bare step, training loop and inference of a config's model
  phases     time-based phases (warm up until steady, then timed windows) that every benchmark uses
  precision  bfloat16 against float32 in one process;  op_profile: where a step's time goes, per XLA op
  table      ours against the peers (PyTorch, Keras) in one run on one machine, as a dated table
  input      the HDF5 reader and each augmentation;  prepare: building HDF5 files from a photo folder
  export     an export folder's runtimes (JAX, SavedModel, ONNX, TFLite)
"""
