"""Training machinery: state, steps, optimizers and schedules, data parallelism, checkpoints, logging.

Takes a Linen model, an optimizer and batches; knows nothing about datasets or the evaluation reports.
"""
