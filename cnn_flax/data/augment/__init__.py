"""What happens to a uint8 batch inside the compiled step: normalisation, then augmentation when training.

preprocess builds that function from config.data; keras_affine is Keras's ImageDataGenerator (rotation,
shifts, shear, zoom, flip, nearest fill); crops, erasing, policies (RandAugment, TrivialAugment) and
mixing (mixup, CutMix) are the current recipes, chosen by recipes from config.data.augment.
"""
