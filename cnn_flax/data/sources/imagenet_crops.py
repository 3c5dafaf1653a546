"""The crops that turn one decoded ImageNet photo into a square uint8 input, as TensorFlow ops for tf.data.

The scheme is VGG's single-scale one (Simonyan & Zisserman 2015, section 3.1), which is also the
Keras/Caffe convention the deck's VGG16 weights were evaluated with:
- train: rescale isotropically so that the shorter side is S, cut a random `size` x `size` crop, flip it
  horizontally with probability 1/2 (the paper's RGB colour shift is left out);
- eval: rescale the shorter side to S, keep the central `size` x `size` crop.
S is 256 for 224 crops, and scales with the crop (S = round(size * 256 / 224)) unless `data.resize_size`
sets it. GoogLeNet's paper trained on random-area crops instead; one scheme for both keeps their inputs
comparable, and the models see the same distribution at evaluation either way.

Randomness is stateless (a seed per example), so a resumed epoch reproduces the crops it would have made.
Resizing is bilinear with antialiasing, so downscaling large photos averages pixels instead of skipping them.
"""

import tensorflow as tf


def resize_shorter_side(image: tf.Tensor, shorter: int) -> tf.Tensor:
    """float32 [h', w', 3] with min(h', w') == shorter and the aspect ratio kept (to the nearest pixel)."""
    hw = tf.cast(tf.shape(image)[:2], tf.float64)
    new_hw = tf.cast(tf.math.round(hw * shorter / tf.reduce_min(hw)), tf.int32)
    return tf.image.resize(image, new_hw, method="bilinear", antialias=True)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.math.round(image), 0.0, 255.0), tf.uint8)


def eval_crop(image: tf.Tensor, size: int, shorter: int) -> tf.Tensor:
    """uint8 [size, size, 3]: the centre of the image rescaled to shorter side `shorter`."""
    resized = resize_shorter_side(image, shorter)
    hw = tf.shape(resized)[:2]
    top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
    return _to_uint8(resized[top : top + size, left : left + size])


def train_crop(image: tf.Tensor, size: int, shorter: int, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [size, size, 3]: a random crop of the rescaled image, flipped or not; `seed` is int64 [2]."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    resized = resize_shorter_side(image, shorter)
    crop = tf.image.stateless_random_crop(resized, [size, size, 3], seed=crop_seed)
    return _to_uint8(tf.image.stateless_random_flip_left_right(crop, seed=flip_seed))


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """uint8 [h, w, 3] from JPEG bytes (TFDS stores every ImageNet image as RGB JPEG; grayscale ones widen)."""
    return tf.io.decode_jpeg(encoded, channels=3)
