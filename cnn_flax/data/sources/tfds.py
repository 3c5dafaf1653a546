"""TensorFlow Datasets as a file reader only, shared by the TFDS-backed sources (CIFAR-10, ImageNet).

TensorFlow is imported on first use, through `cnn_flax.tensorflow_cpu`, which keeps it off every GPU.
"""

import os


def import_tfds():
    """tensorflow_datasets, with TensorFlow kept on the CPU."""
    from cnn_flax.tensorflow_cpu import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    return tfds


def shown_dir(data_dir: str) -> str:
    """The TFDS data folder as a user should read it in an error message (TFDS's own default when unset)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR", "") or "~/tensorflow_datasets"
