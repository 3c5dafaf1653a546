"""VGG16 (configuration D) as keras.applications builds it: the deck's `VGG16(weights="imagenet")`.

    python launch.py --config configs/vgg16_imagenet.py --mode=summary   # 138,357,544 parameters
    python launch.py --config configs/vgg16_imagenet.py --mode=predict --images=a.jpg,b.png \\
        --config.init_from=vgg16_weights_tf_dim_ordering_tf_kernels.h5

Prediction uses Keras's 'caffe' preprocessing and the 1,000 ImageNet names shipped with the package.
Expected with Keras's published weights: Keras's own top-5 predictions, to float tolerance.
"""

from configs import vgg_imagenet


def get_config():
    config = vgg_imagenet.get_config("D")
    config.name = "vgg16_imagenet"
    return config
