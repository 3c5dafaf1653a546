"""The deck's Experiment 1: DeeperGoogLeNet without inception 4a–4e, SGD (momentum 0.9), 65 epochs.

    python launch.py --config configs/deeper_exp1_sgd.py

Epochs 1–25: 1e-2 · 26–35: 1e-3 · 36–65: 1e-4 (the deck pairs SGD with this table; our reading).
Expected: not given by the deck; the smaller network (0.77M parameters) trails the full one. About 1.5
hours on one GPU.
"""

from configs.common import base, tiny_imagenet


def get_config():
    config = tiny_imagenet(base("deeper_exp1_sgd"))
    config.num_epochs = 65
    config.model.stage4 = False
    # keras=True: Keras's update rule (the rate inside the momentum), as the deck trained
    config.optimizer.update(dict(name="sgd", learning_rate=1e-2, momentum=0.9, keras=True))
    config.schedule.update(dict(name="piecewise", boundaries=(25, 35), values=(1e-2, 1e-3, 1e-4)))
    return config
