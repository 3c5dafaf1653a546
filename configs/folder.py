"""MiniVGG from scratch on your own images: one subfolder per class (the book's Flowers-17 / Animals setup).

    python launch.py --config configs/folder.py --config.data.root=~/datasets/flowers17
    python launch.py --config configs/folder.py --mode=predict --images=~/new_photos/ \\
        --config.data.root=~/datasets/flowers17

The first run decodes every image once into data/folder_hdf5 (64x64, shorter side then centre crop;
`--mode=prepare` does only that), carving 10% val and 10% test from each class unless the folder has
val/ and test/ beside train/. The class count comes from the folders. Expected on Flowers-17 (1,360
photos, 17 classes): about 0.70 test accuracy after 100 epochs with this augmentation (the book reports
0.64 without it, 0.71 with it); roughly 15 minutes on one GPU, hours on a 2-core CPU. On a few dozen
images per class of clean, centred objects (digits), a few epochs reach 0.9 and above.
"""

from configs.common import base, photo_folder


def get_config():
    config = photo_folder(base("folder"), image_size=64, normalize="scale", data_dir="data/folder_hdf5")
    config.num_epochs = 100
    config.checkpoint_every_epochs = 10
    config.model.update(dict(name="minivgg", num_classes=-1, bn_order="conv_act_bn",
                             bn_momentum=0.99, activation="relu"))
    config.optimizer.update(dict(name="sgd", learning_rate=0.05, momentum=0.0))
    config.schedule.update(dict(name="keras_time_decay", decay=0.05 / config.num_epochs))
    return config
