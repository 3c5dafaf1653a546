"""Pieces shared by the config files: `base()` (every key with its default, from the library) and the
deck's Tiny ImageNet setup; each experiment file starts from them and changes what it needs."""

import ml_collections

from cnn_flax.defaults import base

__all__ = ["base", "photo_folder", "tiny_imagenet"]


def tiny_imagenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The deck's Tiny ImageNet setup: 64x64, per-channel mean subtraction, its augmentation."""
    config.data.update(dict(name="tiny_imagenet", dir="data/tiny_imagenet_hdf5", root="data/tiny-imagenet-200",
                            image_size=64, normalize="mean_rgb"))
    config.data.augment.update(dict(rotation=18.0, zoom=0.15, width_shift=0.2, height_shift=0.2, shear=0.15,
                                    horizontal_flip=True))
    config.model.update(dict(
        name="deepergooglenet", num_classes=-1, stage4=True, bn_order="conv_bn_act", bn_momentum=0.99,
        activation="relu"))
    config.optimizer.l2 = 0.0002
    config.batch_size = 64
    return config


def photo_folder(config: ml_collections.ConfigDict, image_size: int, normalize: str,
                 data_dir: str) -> ml_collections.ConfigDict:
    """Your own photos (data.root, set on the command line): square crops, 10% val and test carved per
    class, the book's augmentation for small photo sets; batch 32, logged every 20 steps."""
    config.data.update(dict(name="folder", root="", dir=data_dir, image_size=image_size, normalize=normalize,
                            resize="aspect", val_fraction=0.1, test_fraction=0.1))
    config.data.augment.update(dict(rotation=30.0, zoom=0.2, width_shift=0.1, height_shift=0.1, shear=0.2,
                                    horizontal_flip=True))
    config.batch_size = 32
    config.log_every_steps = 20
    return config
