"""GoogLeNet (the paper's table, LRN, two auxiliary heads weighted 0.3) on ImageNet at 224x224.

    python launch.py --config configs/googlenet_imagenet.py --mode=summary
    python launch.py --config configs/googlenet_imagenet.py --mode=prepare \\
        --config.data.dir=/data/tfds --config.data.manual_dir=/data/imagenet_tars   # once, hours
    python launch.py --config configs/googlenet_imagenet.py --config.data.dir=/data/tfds

Data: TFDS imagenet2012 from the manual download (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from
image-net.org, in data.manual_dir; default <data.dir>/downloads/manual), streamed from disk with random
224 crops of the image rescaled to shorter side 256 plus flips, and the central crop for evaluation (the
validation set serves as val and test). SGD momentum 0.9, rate 0.01 lowered 4% every 8 epochs (the paper).
Expected: many GPU-days (120 epochs of 1.28M images; not run here). The paper's single model reaches
~10.07% top-5 error with multi-crop testing; the single central crop evaluated here gives more.
"""

from configs.common import base


def get_config():
    config = base("googlenet_imagenet")
    config.num_epochs = 120
    config.batch_size = 256
    config.data.update(dict(name="imagenet2012", image_size=224, normalize="caffe"))
    config.model.update(dict(name="googlenet", num_classes=1000, aux_heads=True, activation="relu"))
    config.loss.aux_weight = 0.3
    config.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, l2=2e-4))
    config.schedule.update(dict(name="exponential", decay_rate=0.96, decay_epochs=8, staircase=True))
    return config
