"""MiniGoogLeNet on CIFAR-10, as in the deck: SGD 5e-3, momentum 0.9, linear decay lr·(1 − epoch/70), 70 epochs.

    python launch.py --config configs/minigooglenet_cifar10.py --mode=prepare   # once, needs network (TFDS)
    python launch.py --config configs/minigooglenet_cifar10.py

Per-pixel mean image subtracted; width/height shift 0.1 and horizontal flip (nearest fill), on the device.
Expected: the deck reports 0.90 test accuracy (1.6M parameters). About 40 minutes on one GPU.
"""

from configs.common import base


def get_config():
    config = base("minigooglenet_cifar10")
    config.num_epochs = 70
    config.batch_size = 64
    config.data.update(dict(name="cifar10", image_size=32, normalize="mean_image"))
    config.data.augment.update(dict(width_shift=0.1, height_shift=0.1, horizontal_flip=True))
    config.model.update(dict(name="minigooglenet", num_classes=10, bn_order="conv_bn_act",
                             bn_momentum=0.99, activation="relu"))
    # keras=True: Keras's update rule (the rate inside the momentum), as the deck trained
    config.optimizer.update(dict(name="sgd", learning_rate=5e-3, momentum=0.9, nesterov=False, keras=True))
    config.schedule.update(dict(name="polynomial", power=1.0))
    return config
