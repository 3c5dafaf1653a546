"""The 1000 ImageNet class names in label order, as Keras's imagenet_class_index.json spells them.

TFDS names the classes by WordNet id (n01440764); reports and predictions read better with Keras's
words (`tench`, `great_white_shark`, … `toilet_tissue`), which come in the same sorted-id order. Keras
downloads its file the first time decode_predictions runs; runs here may have no network, so the names
ship in the package (imagenet_classes.txt, one per line). ImageNet itself repeats two names (`crane`,
`maillot`), so look classes up by index, never by name.

A module of its own, so that reading the names never imports TensorFlow.
"""

import functools
from importlib import resources

NUM_IMAGENET_CLASSES = 1000


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """Class index -> name, as Keras's decode_predictions prints them."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(text.splitlines())
    if len(names) != NUM_IMAGENET_CLASSES:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, not 1000; reinstall cnn_flax")
    return names
