"""Weight files of other frameworks in our Flax models: Keras's .h5 files (the book's and the ImageNet VGGs),
torchvision's and timm's VGG files (.pth, .safetensors), our own safetensors, and Hub repositories of them.

Nothing here imports Keras, TensorFlow or PyTorch, and no file's content ever runs: .h5 files are read
with h5py, .pth pickles by an unpickler that builds only tensors (torch_pickle), safetensors as a header
and bytes. `weight_files.load_weight_file` picks the reader for a source.
"""

from cnn_flax.data.sources.imagenet_classes import imagenet_class_names
from cnn_flax.pretrained.images import CAFFE_BGR_MEAN, caffe_preprocess, load_images
from cnn_flax.pretrained.keras_h5 import load_keras_weights

__all__ = ["CAFFE_BGR_MEAN", "caffe_preprocess", "imagenet_class_names", "load_images", "load_keras_weights"]
