"""The book's transfer learning on your own images: VGG16's ImageNet weights, a new head, then fine-tuning.

Phase 1 ("head", the default): every convolution frozen, the new 'predictions' layer (sized by the
folder's class count) and fc1/fc2 train. Phase 2 ("body"): starts from phase 1's last checkpoint,
unfreezes block5 at a tenth of the head's learning rate; blocks 1-4 stay frozen.

    python launch.py --config configs/vgg16_finetune.py:head --config.data.root=~/datasets/flowers17 \\
        --config.init_from=vgg16_weights_tf_dim_ordering_tf_kernels.h5
    python launch.py --config configs/vgg16_finetune.py:body --config.data.root=~/datasets/flowers17
    python launch.py --config configs/vgg16_finetune.py:body --config.data.root=~/datasets/flowers17 \\
        --mode=predict --images=~/new_photos/

The weight file is Keras's VGG16 with its top (528 MB); with the 'notop' file (58 MB) add
`--config.init_skip=fc1,fc2,predictions` to phase 1 (fc1/fc2 then start from random weights).
Images are 224x224 (shorter side, centre crop) with Keras's 'caffe' preprocessing, which the ImageNet
weights expect. Phase 1 writes runs/vgg16_finetune_head, phase 2 runs/vgg16_finetune_body (init_from
points there). Expected on Flowers-17: the book reports about 0.90 test accuracy after the head
warm-up and about 0.95 after fine-tuning; each phase takes minutes on a GPU (VGG16 at 224 is far too
heavy for a 2-core CPU).
"""

from configs.common import base, photo_folder

PHASES = ("head", "body")


def get_config(phase: str = "head"):
    if phase not in PHASES:
        raise ValueError(f"configs/vgg16_finetune.py:{phase}: use :head (phase 1) or :body (phase 2)")
    config = photo_folder(base(f"vgg16_finetune_{phase}"), image_size=224, normalize="caffe",
                          data_dir="data/folder_224_hdf5")
    config.checkpoint_every_epochs = 5
    config.model.update(dict(name="vgg", variant="D", num_classes=-1))
    if phase == "head":
        config.num_epochs = 25
        config.init_skip = "predictions"
        config.optimizer.update(dict(name="sgd", learning_rate=1e-3, momentum=0.9, freeze="^block"))
    else:
        config.num_epochs = 50
        config.init_from = "runs/vgg16_finetune_head"
        config.optimizer.update(dict(name="sgd", learning_rate=1e-3, momentum=0.9, freeze="^block[1-4]_",
                                     lr_multipliers={"^block5_": 0.1}))
    return config
