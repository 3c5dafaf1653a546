"""The datasets: each reads its files (or arrays) and yields plain uint8 batches in a fixed order.

digits, cifar10 (TFDS), synthetic and in_memory hold arrays; tiny_imagenet and folder build HDF5 files
(hdf5_files writes and checks them, hdf5_reader streams them, hdf5 is the source over them); imagenet
reads TFDS's imagenet2012 with its crops; images decodes photo files. The registry (data/registry.py)
names them for config.data.name and imports each lazily.
"""
