"""Network in Network on CIFAR-10: mlpconv blocks 192-160-96 / 192-192-192 / 192-192-10 and global pooling.

    python launch.py --config configs/nin_cifar10.py

SGD 0.01, momentum 0.9, L2 1e-4, rate /10 at epochs 40 and 60; per-pixel mean subtraction, shift and flip.
Expected: not yet measured with this code; the paper reports 89.6% with augmentation. About 30 minutes
on one GPU.
"""

from configs.common import base


def get_config():
    config = base("nin_cifar10")
    config.num_epochs = 80
    config.batch_size = 128
    config.data.update(dict(name="cifar10", image_size=32, normalize="mean_image"))
    config.data.augment.update(dict(width_shift=0.1, height_shift=0.1, horizontal_flip=True))
    config.model.update(dict(name="nin", num_classes=10, activation="relu"))
    config.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, l2=1e-4))
    config.schedule.update(dict(name="piecewise", boundaries=(40, 60), values=(1e-2, 1e-3, 1e-4)))
    return config
