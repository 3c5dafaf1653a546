"""A VGG configuration of the paper's Table 1 at 224x224: pass its letter, A, A-LRN, B, C, D or E.

    python launch.py --config configs/vgg_imagenet.py:C --mode=summary   # 133,638,952 parameters
    python launch.py --config configs/vgg_imagenet.py:D --mode=predict --images=cat.jpg \\
        --config.init_from=vgg16_weights_tf_dim_ordering_tf_kernels.h5

SGD momentum 0.9, rate 0.01 lowered 10x three times, L2 5e-4, batch 256, dropout 0.5 (the paper).
Training needs an ImageNet input pipeline, which cnn_flax does not have yet; summaries, Keras weights
(D, E) and prediction work now. Expected (paper, single scale): top-5 error A 10.4%, D 8.8%, E 9.0%.
"""

from configs.common import base


def get_config(variant: str = "D"):
    config = base(f"vgg_imagenet_{variant}")
    config.num_epochs = 74
    config.batch_size = 256
    config.data.update(dict(name="imagenet2012", image_size=224, normalize="caffe"))
    config.model.update(dict(name="vgg", variant=variant, num_classes=1000, include_top=True))
    config.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, l2=5e-4))
    config.schedule.update(dict(name="piecewise", boundaries=(30, 50, 65), values=(1e-2, 1e-3, 1e-4, 1e-5)))
    return config
