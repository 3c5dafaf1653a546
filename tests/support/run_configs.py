"""Small configs for tests: the quickstart shrunk to seconds, dotted overrides, optimizing compiles."""

import contextlib

import jax


@contextlib.contextmanager
def optimized_compiles():
    """XLA's optimizing compiles, as a user's run has them, for tests whose steps (not their compiles) take the
    time: many steps, large networks (VGG16). Elsewhere the unoptimized compiles win."""
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)


def tiny_config(**overrides):
    """The quickstart at 16x16 with a few steps per epoch: seconds per epoch on a CPU.

    On one device, and no Grad-CAM figure of the worst mistakes unless `gradcam.mistakes` asks for one.
    `overrides` are dotted config keys, e.g. `tiny_config(num_epochs=2, **{"model.bn_order": "conv_bn_act"})`.
    """
    from configs import quickstart

    config = quickstart.get_config()
    config.data.image_size = 16
    config.batch_size = 32
    config.steps_per_epoch = 4
    config.eval_steps = 2
    config.log_every_steps = 2
    config.checkpoint_every_epochs = 1
    # The report's Grad-CAM figure compiles a gradient of the model and draws a figure: a second or two of every
    # run. tests/run/test_gradcam.py asks for it (gradcam.mistakes); the other runs test something else.
    config.gradcam.mistakes = 0
    # One of the eight fake CPU devices: the same small training took 80% more CPU time over all eight. The
    # tests about several devices ask for them (num_devices=0): pmap, data.on_device, the modern switches' resume.
    config.num_devices = 1
    return with_overrides(config, overrides)


def with_overrides(config, overrides):
    """`config` with dotted keys set, e.g. {"optimizer.name": "adam"}; returned for chaining."""
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return config
