"""DeeperGoogLeNet (inception 4a–4e) on Tiny ImageNet with a current training recipe instead of the deck's.

    python launch.py --config configs/deeper_tiny_imagenet_modern.py --mode=prepare   # HDF5, as deeper_adam
    python launch.py --config configs/deeper_tiny_imagenet_modern.py
    python launch.py --config configs/deeper_tiny_imagenet_modern.py --mode=evaluate --ema   # the averaged weights

Same network, data and augmentation as deeper_adam, the deck's best setup; what changes: batch 128, AdamW
at 2e-3 with decoupled weight decay 0.05 on kernels (in place of Adam with the L2 penalty), 5 warmup
epochs, then a cosine to 1e-5 over 70 epochs; gradients clipped to global norm 1; label smoothing 0.1;
and a moving average of the weights (decay 0.9995, about 3 epochs of 703 steps) reported beside the raw
ones. Expected runtime: about 3 hours on one GPU, as deeper_adam (estimated, not measured).
Expected accuracy: no paper reports this network with this recipe. For scale, the literature's figures
(not measured here): reproductions of the deck's deeper_adam reach 55–57% rank-1; Yu, "Deep Convolutional
Neural Networks for Tiny ImageNet Classification" (Stanford CS231n report) finds reduced GoogLeNet and
ResNet models trained from scratch plateau near 50% validation accuracy, its best (ResNet-20) at 55.4%.
"""

from configs import deeper_adam


def get_config():
    config = deeper_adam.get_config()
    config.name = "deeper_tiny_imagenet_modern"
    config.batch_size = 128
    config.optimizer.update(dict(name="adamw", learning_rate=2e-3, weight_decay=0.05, l2=0.0, clip_global_norm=1.0))
    config.schedule.update(dict(name="warmup_cosine", warmup_epochs=5.0, final_rate=1e-5))
    config.loss.label_smoothing = 0.1
    config.ema_decay = 0.9995
    return config
