"""MiniVGG on CIFAR-10, as in the deck: SGD 0.01, momentum 0.9, Nesterov, Keras decay 0.01/40, 40 epochs.

    python launch.py --config configs/minivgg_cifar10.py --mode=prepare   # once, needs network (TFDS)
    python launch.py --config configs/minivgg_cifar10.py

Expected: the deck reports 0.82 test accuracy (2.1M parameters). About 10 minutes on one GPU.
"""

from configs.common import base


def get_config():
    config = base("minivgg_cifar10")
    config.num_epochs = 40
    config.batch_size = 64
    config.data.update(dict(name="cifar10", image_size=32, normalize="scale"))
    config.model.update(dict(name="minivgg", num_classes=10, bn_order="conv_act_bn",
                             bn_momentum=0.99, activation="relu"))
    # keras=True: Keras's update rule (the rate inside the momentum), as the deck trained
    config.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=True, keras=True))
    config.schedule.update(dict(name="keras_time_decay", decay=0.01 / 40))
    return config
