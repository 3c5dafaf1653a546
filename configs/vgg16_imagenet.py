"""VGG16 (configuration D) as keras.applications builds it: the deck's `VGG16(weights="imagenet")`.

    python launch.py --config configs/vgg16_imagenet.py --mode=summary   # 138,357,544 parameters
    python launch.py --config configs/vgg16_imagenet.py --mode=predict --images=a.jpg,b.png \\
        --config.init_from=vgg16_weights_tf_dim_ordering_tf_kernels.h5

    python launch.py --config configs/vgg16_imagenet.py --mode=prepare \\
        --config.data.dir=/data/tfds --config.data.manual_dir=/data/imagenet_tars   # once, hours
    python launch.py --config configs/vgg16_imagenet.py --mode=evaluate --config.data.dir=/data/tfds \\
        --config.init_from=vgg16_weights_tf_dim_ordering_tf_kernels.h5   # Keras's weights on the val set

Prediction uses Keras's 'caffe' preprocessing and the 1,000 ImageNet names shipped with the package.
Training and evaluation read TFDS imagenet2012 (see vgg_imagenet.py for the data and the crops).
Expected with Keras's published weights: Keras's own top-5 predictions, to float tolerance.
"""

from configs import vgg_imagenet


def get_config():
    config = vgg_imagenet.get_config("D")
    config.name = "vgg16_imagenet"
    return config
