"""TensorFlow where cnn_flax uses it: tf.data and TFDS reading, SavedModel and TFLite export.

Nothing imports TensorFlow at start-up: the import costs seconds of CPU, and a training run on digits, HDF5
or image folders needs none of it. Its first use hides every GPU from it before it can reserve memory there
(TensorFlow only reads files and converts graphs here; JAX needs the accelerator's memory), and holds back
the notices its C++ runtime prints while it loads (CUDA probing, CPU instruction sets) unless the terminal
shows the full log.
"""

import sys
from types import ModuleType

from cnn_flax.console import quiet_native_start


def import_tensorflow() -> ModuleType:
    """The `tensorflow` module, kept off every GPU."""
    if "tensorflow" in sys.modules:
        import tensorflow as tf
    else:
        with quiet_native_start():
            import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # devices already initialised, or no GPU support in this build
        pass
    return tf
