"""Weight files of other frameworks in our Flax models: Keras's .h5 files (the book's and the ImageNet VGGs).

Nothing here imports Keras or TensorFlow: the weight files are read with h5py, so the published .h5
files are all a run needs.
"""

from cnn_flax.data.sources.imagenet_classes import imagenet_class_names
from cnn_flax.pretrained.images import CAFFE_BGR_MEAN, caffe_preprocess, load_images
from cnn_flax.pretrained.keras_h5 import load_keras_weights

__all__ = ["CAFFE_BGR_MEAN", "caffe_preprocess", "imagenet_class_names", "load_images", "load_keras_weights"]
