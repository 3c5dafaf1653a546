"""TensorFlow Datasets as a file reader only, shared by the TFDS-backed sources (CIFAR-10, ImageNet).

TensorFlow is imported lazily (it costs seconds, and `--mode=summary` needs none of it) and hidden from
every GPU before anything can allocate there, so that JAX keeps the accelerator's memory to itself.
"""

import os


def import_tfds():
    """tensorflow_datasets, with TensorFlow kept on the CPU."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # devices already initialised, or no GPU support in this build
        pass
    import tensorflow_datasets as tfds

    return tfds


def shown_dir(data_dir: str) -> str:
    """The TFDS data folder as a user should read it in an error message (TFDS's own default when unset)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR", "") or "~/tensorflow_datasets"
