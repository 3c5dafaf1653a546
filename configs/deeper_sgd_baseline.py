"""DeeperGoogLeNet on Tiny ImageNet, the deck's baseline: SGD 1e-3, momentum 0.9, 40 epochs, epoch_5 … epoch_40.

    python launch.py --config configs/deeper_sgd_baseline.py --mode=prepare   # HDF5 from data/tiny-imagenet-200
    python launch.py --config configs/deeper_sgd_baseline.py
    python launch.py --config configs/deeper_sgd_baseline.py --mode=evaluate --checkpoint=all

Expected: the deck reports rank-1 30.23%, rank-5 54.34%. About 1.5 hours on one GPU.
"""

from configs.common import base, tiny_imagenet


def get_config():
    config = tiny_imagenet(base("deeper_sgd_baseline"))
    config.num_epochs = 40
    config.checkpoint_every_epochs = 5
    # keras=True: Keras's update rule (the rate inside the momentum), as the deck trained
    config.optimizer.update(dict(name="sgd", learning_rate=1e-3, momentum=0.9, keras=True))
    config.schedule.update(dict(name="constant"))
    return config
