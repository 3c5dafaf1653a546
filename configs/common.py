"""Pieces shared by the config files: `base()` (every key with its default, from the library) and the
deck's Tiny ImageNet setup; each experiment file starts from them and changes what it needs."""

import ml_collections

from cnn_flax.defaults import base

__all__ = ["base", "tiny_imagenet"]


def tiny_imagenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The deck's Tiny ImageNet setup: 64x64, per-channel mean subtraction, its augmentation."""
    config.data.update(dict(name="tiny_imagenet", dir="data/tiny_imagenet_hdf5", root="data/tiny-imagenet-200",
                            image_size=64, normalize="mean_rgb"))
    config.data.augment.update(dict(rotation=18.0, zoom=0.15, width_shift=0.2, height_shift=0.2, shear=0.15,
                                    horizontal_flip=True))
    config.model.update(dict(
        name="deepergooglenet", num_classes=-1, stage4=True, bn_order="conv_bn_act", activation="relu"))
    config.optimizer.l2 = 0.0002
    config.batch_size = 64
    return config
