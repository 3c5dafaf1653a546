"""The deck's Experiment 2: DeeperGoogLeNet without inception 4a–4e, Adam, 40 epochs.

    python launch.py --config configs/deeper_exp2_adam.py

Epochs 1–20: 1e-3 · 21–30: 1e-4 · 31–40: 1e-5.
Expected: not given by the deck. About 1 hour on one GPU.
"""

from configs.common import base, tiny_imagenet


def get_config():
    config = tiny_imagenet(base("deeper_exp2_adam"))
    config.num_epochs = 40
    config.model.stage4 = False
    # keras=True: Keras's Adam (epsilon added to sqrt(v), not to its bias-corrected form), as the deck trained
    config.optimizer.update(dict(name="adam", learning_rate=1e-3, keras=True))
    config.schedule.update(dict(name="piecewise", boundaries=(20, 30), values=(1e-3, 1e-4, 1e-5)))
    return config
