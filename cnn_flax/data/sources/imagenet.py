"""ImageNet (ILSVRC 2012) from TFDS `imagenet2012`, streamed from its files with tf.data, never held whole.

Unlike the in-memory and HDF5 sources, rows cannot be fetched by index, so the batch-plan contract is
kept this way:
- each process reads its own contiguous part of the split (`tfds.even_splits`, earlier processes take the
  extra rows) and shuffles only that part: the file order and a `data.shuffle_buffer`-row buffer are both
  seeded from (seed, epoch), so an epoch's order is the same in every run, but it depends on the number
  of processes (the other sources' global batches do not);
- every process yields the same number of batches: training takes exactly `num_batches` full batches
  (each part holds enough rows), evaluation pads with fully masked batches, so no collective waits;
- `start_batch` skips the encoded rows before any decoding, and crops are seeded by (seed, epoch, process,
  row position), so a resumed epoch continues with exactly the batches the interrupted one would have had.

Splits: ImageNet's test labels were never published, so `test` (the final report) and `val` are both the
official 50,000-image validation set; `train` is the 1,281,167-image training set. Images leave as uint8
crops (see `imagenet_crops`), labels as int32 in TFDS's order (sorted WordNet ids, which is also Keras's);
normalisation (e.g. 'caffe') happens in the train step like for every source.

Preparing needs the two tar files of a manual download (image-net.org requires a login); nothing here
touches the network.
"""

import functools
import os
import tarfile
from collections.abc import Iterator

import numpy as np

from cnn_flax.data.constants import CAFFE_BGR_MEAN
from cnn_flax.data.dataset import BatchPlan, DatasetInfo, DataSource, check_split, finish_batch, one_line
from cnn_flax.data.sources.imagenet_classes import imagenet_class_names
from cnn_flax.data.sources.tfds import import_tfds, shown_dir
from cnn_flax.errors import UserError

NAME = "imagenet2012"
TFDS_SPLITS = {"train": "train", "val": "validation", "test": "validation"}
MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
DOWNLOAD_PAGE = "https://image-net.org/download-images"
# The ImageNet training-set mean in RGB, pixel scale: the numbers behind Keras's 'caffe' preprocessing.
# Computing it would mean decoding 1.28 million images, so 'mean_rgb' and 'mean_image' use this.
MEAN_RGB = CAFFE_BGR_MEAN[::-1]


def default_resize_size(size: int) -> int:
    """The shorter side S that `size` crops are cut from: 256 for 224 (VGG's S), the same ratio otherwise."""
    return int(round(size * 256 / 224))


def tfds_root(data_dir: str) -> str:
    return os.path.expanduser(shown_dir(data_dir))


def default_manual_dir(data_dir: str) -> str:
    """Where TFDS looks for manual downloads when data.manual_dir is empty: <data dir>/downloads/manual."""
    return os.path.join(tfds_root(data_dir), "downloads", "manual")


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """(shuffle seed, crop seed) of one epoch: a function of (seed, epoch) only (2012 keeps the stream apart
    from `epoch_order`'s for the same pair)."""
    shuffle_seed, crop_seed = np.random.default_rng([int(seed), int(epoch), 2012]).integers(0, 2**31 - 1, 2)
    return int(shuffle_seed), int(crop_seed)


def shard_size(n: int, process_index: int, process_count: int) -> int:
    """Rows of the split that `tfds.even_splits` gives this process (the first n % count get one more)."""
    return n // process_count + (process_index < n % process_count)


class ImageNetSource(DataSource):
    def __init__(
        self,
        data_dir: str = "",
        manual_dir: str = "",
        image_size: int = 224,
        resize_size: int = 0,
        shuffle_buffer: int = 10_000,
        prefetch: int = 2,
    ):
        if image_size < 1:
            raise UserError(f"data.image_size={image_size} must be positive for {NAME}; set e.g. 224")
        self.resize_size = resize_size or default_resize_size(image_size)
        if self.resize_size < image_size:
            raise UserError(f"data.resize_size={resize_size} is smaller than data.image_size={image_size}; "
                            "crops are cut from the resized image, so set data.resize_size >= data.image_size (or 0)")
        if shuffle_buffer < 1:
            raise UserError(f"data.shuffle_buffer={shuffle_buffer} must be at least 1")
        self.data_dir, self.manual_dir = data_dir, manual_dir or default_manual_dir(data_dir)
        self.image_size, self.shuffle_buffer, self.prefetch = image_size, shuffle_buffer, prefetch

    def _builder(self):
        tfds = import_tfds()
        return tfds, tfds.builder(NAME, data_dir=self.data_dir or None)

    @functools.cached_property
    def info(self) -> DatasetInfo:  # read once: it opens files
        _, builder = self._builder()
        if not builder.is_prepared():
            raise UserError(
                f"TFDS data for {NAME} not found in data.dir={shown_dir(self.data_dir)}; put "
                f"{' and '.join(MANUAL_FILES)} in data.manual_dir={self.manual_dir} and run `python launch.py "
                "--config ... --mode=prepare`"
            )
        splits = builder.info.splits
        missing = [name for name in sorted(set(TFDS_SPLITS.values())) if name not in splits]
        if missing:
            raise UserError(
                f"the {NAME} data in data.dir={shown_dir(self.data_dir)} has no {missing[0]} split (a tar file "
                f"was missing when it was prepared); put {' and '.join(MANUAL_FILES)} in "
                f"data.manual_dir={self.manual_dir} and run --mode=prepare --overwrite"
            )
        size = self.image_size
        mean_rgb = np.asarray(MEAN_RGB, np.float32)
        labels = builder.info.features["label"]
        return DatasetInfo(
            name=NAME,
            num_classes=labels.num_classes,
            class_names=imagenet_class_names(),  # Keras's words (tench) in TFDS's label order, not WordNet ids
            image_shape=(size, size, 3),
            split_sizes={split: int(splits[name].num_examples) for split, name in TFDS_SPLITS.items()},
            mean_rgb=mean_rgb,
            mean_image=np.broadcast_to(mean_rgb, (size, size, 3)).copy(),
        )

    def prepare(self, overwrite: bool = False) -> list[str]:
        """Turns the two manual-download tars into TFDS files (hours for the real data, ~156 GiB of files)."""
        tfds, builder = self._builder()
        if overwrite or not builder.is_prepared():
            missing = [f for f in MANUAL_FILES if not os.path.isfile(os.path.join(self.manual_dir, f))]
            if missing:
                raise UserError(
                    f"{NAME} needs {' and '.join(MANUAL_FILES)} in data.manual_dir={self.manual_dir} "
                    f"({', '.join(missing)} not found); download them from {DOWNLOAD_PAGE} (free login) and put "
                    "them there, or set --config.data.manual_dir to the folder that holds them"
                )
            mode = tfds.download.GenerateMode
            config = tfds.download.DownloadConfig(
                manual_dir=self.manual_dir,
                download_mode=mode.FORCE_REDOWNLOAD if overwrite else mode.REUSE_DATASET_IF_EXISTS,
            )
            try:
                builder.download_and_prepare(download_config=config)
            except (OSError, tarfile.TarError) as error:  # unreadable or truncated tars, disk full
                raise UserError(
                    f"could not prepare {NAME} from data.manual_dir={self.manual_dir} into "
                    f"data.dir={shown_dir(self.data_dir)} ({one_line(error)}); check the tar files and free disk "
                    "space, then run --mode=prepare --overwrite"
                ) from error
            self.__dict__.pop("info", None)  # prepared anew: read the facts again
        return [str(builder.data_dir)]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        check_split(split)
        raise UserError(
            f"data.name={NAME!r} is streamed from its files and cannot be held whole in memory; "
            "set --config.data.on_device=False"
        )

    def _stream(self, split: str, plan: BatchPlan) -> Iterator[dict[str, np.ndarray]]:
        tfds, builder = self._builder()
        import tensorflow as tf

        from cnn_flax.data.sources.imagenet_crops import decode, eval_crop, train_crop

        local = plan.local_size
        rows = shard_size(self.info.split_sizes[split], plan.process_index, plan.process_count)
        if plan.drop_remainder:
            rows = plan.num_batches * local  # the same number of full batches on every process
        shuffle_seed, crop_seed = epoch_seeds(plan.seed, plan.epoch)
        read_config = tfds.ReadConfig(
            shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False, try_autocache=False
        )
        ds = builder.as_dataset(
            split=tfds.even_splits(TFDS_SPLITS[split], n=plan.process_count)[plan.process_index],
            shuffle_files=plan.shuffle,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
        ds = ds.map(lambda example: (example["image"], tf.cast(example["label"], tf.int32)))
        if plan.shuffle:
            ds = ds.shuffle(min(self.shuffle_buffer, rows), seed=shuffle_seed, reshuffle_each_iteration=False)
        ds = ds.take(rows).enumerate().skip(plan.start_batch * local)
        size, shorter = self.image_size, self.resize_size
        process, count = plan.process_index, plan.process_count

        def crop(position, example):
            encoded, label = example
            image = decode(encoded)
            if plan.shuffle:
                seed = tf.stack([tf.constant(crop_seed, tf.int64), position * count + process])
                return train_crop(image, size, shorter, seed), label
            return eval_crop(image, size, shorter), label

        ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(local, drop_remainder=plan.drop_remainder).prefetch(tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.deterministic = True
        options.threading.max_intra_op_parallelism = 1  # parallelism across images, not inside one
        ds = ds.with_options(options)
        made = plan.start_batch
        for images, labels in ds.as_numpy_iterator():
            yield finish_batch(images, labels, local, plan.drop_remainder)
            made += 1
        if made < plan.num_batches and plan.drop_remainder:
            raise UserError(
                f"the {NAME} {TFDS_SPLITS[split]} files in data.dir={shown_dir(self.data_dir)} hold fewer rows than "
                "their metadata says; run --mode=prepare --overwrite"
            )
        empty = np.zeros((0, size, size, 3), np.uint8)
        for _ in range(made, plan.num_batches):  # this process's part ran out first: masked padding
            yield finish_batch(empty, np.zeros(0, np.int32), local, drop_remainder=False)
