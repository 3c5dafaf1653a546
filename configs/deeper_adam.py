"""The deck's Experiment 3: DeeperGoogLeNet with inception 4a–4e, Adam, 70 epochs — its best setup.

    python launch.py --config configs/deeper_adam.py --mode=prepare   # HDF5 from data/tiny-imagenet-200
    python launch.py --config configs/deeper_adam.py

Epochs 1–40: 1e-3 · 41–60: 1e-4 · 61–70: 1e-5; batch 64; L2 2e-4 on kernels; the deck's augmentation.
Expected: reproductions of this setup reach 55–57% rank-1 and 80–81% rank-5. About 3 hours on one GPU.
"""

from configs.common import base, tiny_imagenet


def get_config():
    config = tiny_imagenet(base("deeper_adam"))
    config.num_epochs = 70
    config.model.stage4 = True
    # keras=True: Keras's Adam (epsilon added to sqrt(v), not to its bias-corrected form), as the deck trained
    config.optimizer.update(dict(name="adam", learning_rate=1e-3, keras=True))
    config.schedule.update(dict(name="piecewise", boundaries=(40, 60), values=(1e-3, 1e-4, 1e-5)))
    return config
