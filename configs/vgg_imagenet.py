"""A VGG configuration of the paper's Table 1 at 224x224: pass its letter, A, A-LRN, B, C, D or E.

    python launch.py --config configs/vgg_imagenet.py:C --mode=summary   # 133,638,952 parameters
    python launch.py --config configs/vgg_imagenet.py:A --mode=prepare \\
        --config.data.dir=/data/tfds --config.data.manual_dir=/data/imagenet_tars   # once, hours
    python launch.py --config configs/vgg_imagenet.py:A --config.data.dir=/data/tfds
    python launch.py --config configs/vgg_imagenet.py:D --mode=predict --images=cat.jpg \\
        --config.init_from=vgg16_weights_tf_dim_ordering_tf_kernels.h5

Data: TFDS imagenet2012 from the manual download (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from
image-net.org, in data.manual_dir; default <data.dir>/downloads/manual), streamed from disk: the paper's
single-scale training (random 224 crops of the image rescaled to shorter side S=256, horizontal flips) and
the central 224 crop at Q=256 for evaluation (the validation set serves as val and test). SGD momentum
0.9, rate 0.01 lowered 10x three times, L2 5e-4, batch 256, dropout 0.5 (the paper, which also started the
deeper nets from layers of a trained A; here every net starts from random weights).
Expected: weeks of GPU time (74 epochs; not run here); paper, single scale: top-5 error A 10.4%, D 8.8%,
E 9.0%.
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
