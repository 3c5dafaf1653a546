"""Keras's pretrained ImageNet VGG16/VGG19 in our Flax VGG: weight files, class names, preprocessing, top-k.

Nothing here imports Keras or TensorFlow: the weight files are read with h5py, so the published .h5
files are all a run needs.
"""

from cnn_flax.data.imagenet_classes import imagenet_class_names
from cnn_flax.pretrained.images import CAFFE_BGR_MEAN, caffe_preprocess, load_images
from cnn_flax.pretrained.keras_h5 import load_keras_weights
from cnn_flax.pretrained.predict import classify_images, format_predictions, top_k_predictions

__all__ = ["CAFFE_BGR_MEAN", "caffe_preprocess", "classify_images", "format_predictions",
           "imagenet_class_names", "load_images", "load_keras_weights", "top_k_predictions"]
