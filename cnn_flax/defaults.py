"""Every config key and its default: the one home of the defaults, which the library and configs share.

Config files (configs/*.py) start from `base()` and change what their experiment needs; the library
fills partial configs from research code with the same values (`with_defaults`).
Living in the package, it travels with an installed cnn_flax, unlike the configs/ folder.
"""

from collections.abc import Mapping
from typing import Any

import ml_collections


def base(name: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = name  # default workdir: runs/<name>
    config.seed = 0
    config.num_epochs = 1
    config.batch_size = 64  # global, split over all devices of all processes
    config.steps_per_epoch = -1  # -1: the whole train split
    config.eval_steps = -1  # -1: the whole evaluation split
    config.eval_split = "test"  # the split of the final report
    config.parallel = "jit"  # or "pmap"
    config.num_devices = 0  # 0: every device of every process; N: the first N of a one-process run
    config.half_precision = False  # bfloat16 compute, float32 parameters and BatchNorm statistics
    # A weight file (Keras .h5, torchvision VGG .pth, .safetensors), hf://user/name[@revision], an export
    # folder, or a workdir / checkpoints/epoch_N of another run.
    config.init_from = ""
    config.init_skip = ""  # comma-separated layer names not to take from init_from (e.g. predictions)
    config.resume_epoch = -1  # restart from this saved epoch (later checkpoints are set aside)
    # Training from a Keras file in init_from continues after this epoch (-1: the N of an epoch_N.hdf5 name,
    # else 0); with optimizer.keras=True the file's optimizer state (slots, iteration count) is restored too.
    config.init_epoch = -1
    config.checkpoint_every_epochs = 5
    config.keep_checkpoints = 0  # 0: keep every saved epoch
    # Best epochs: keep_best of them (by monitor, a history key) beside the keep_checkpoints newest;
    # --checkpoint=best picks the best saved one. mode: auto (Keras: max for names containing "acc"), min, max.
    config.checkpoint = ml_collections.ConfigDict(dict(monitor="val_loss", mode="auto", keep_best=0))
    # Keras's EarlyStopping and ReduceLROnPlateau callbacks, same arguments and defaults (docs/training_controls.md).
    # baseline: None or a value the monitor must beat; start_from_epoch: epochs never judged at the start.
    config.early_stopping = ml_collections.ConfigDict(dict(
        enabled=False, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
        baseline=ml_collections.FieldReference(None, field_type=float), restore_best_weights=False,
        start_from_epoch=0))
    # The schedule's rate times a factor lowered by `factor` after `patience` epochs without improvement.
    config.reduce_lr_on_plateau = ml_collections.ConfigDict(dict(
        enabled=False, monitor="val_loss", factor=0.1, patience=10, mode="auto", min_delta=1e-4, cooldown=0,
        min_lr=0.0))
    config.log_every_steps = 50
    config.tta = False  # also report horizontal-flip test-time augmentation

    config.ema_decay = 0.0  # > 0: also keep (and report) an exponential moving average of the weights
    config.ema_eval = False  # evaluate, predict and export with the moving average (needs ema_decay > 0)
    config.ema_warmup = True  # decay min(ema_decay, (1 + t)/(10 + t)) at update t, as TF's and timm's EMA
    # > 0: BatchNorm's running statistics recomputed over this many training batches ("precise BN") for the
    # final weights and their moving average, wherever they are evaluated, predicted with or exported.
    config.precise_bn_batches = 0

    config.optimizer = ml_collections.ConfigDict(dict(
        name="sgd", learning_rate=0.01, momentum=0.9, nesterov=False, b1=0.9, b2=0.999, eps=1e-7, l2=0.0,
        # Regular expression over parameter paths ("block5_conv1/kernel") that never change (BatchNorm
        # statistics under a match stay put too); {path pattern: factor} scaling the learning rate.
        freeze="", lr_multipliers={},
        weight_decay=0.0,  # decoupled, on kernels only: adamw and lars
        trust_coefficient=0.001,  # lars
        clip_global_norm=0.0,  # 0: no clipping
        accum_steps=1,  # micro-batches per update (batch_size / accum_steps examples each)
        # True: SGD/Adam with Keras's update rules (the rate inside SGD's velocity, Keras's Adam epsilon), as
        # the deck's Keras runs train; needed to continue a Keras checkpoint's optimizer state exactly.
        keras=False))
    # Durations in epochs (fractions allowed); warmup_epochs goes in front of any schedule.
    config.schedule = ml_collections.ConfigDict(dict(
        name="constant", warmup_epochs=0.0,
        boundaries=(), values=(),  # piecewise: the rates values[i] after the epochs boundaries[i-1]
        decay=0.0,  # keras_time_decay: lr / (1 + decay·step), Keras 2's SGD(decay=...)
        power=1.0,  # polynomial: lr·(1 − epoch/num_epochs)**power
        final_rate=0.0,  # warmup_cosine: the rate the cosine ends at
        decay_rate=1.0, decay_epochs=1.0, staircase=False))  # exponential: ×decay_rate every decay_epochs
    config.loss = ml_collections.ConfigDict(dict(aux_weight=0.3, label_smoothing=0.0))

    # Each dataset reads the shared keys (name, image_size, normalize, augment, on_device, prefetch) and its
    # own (cnn_flax/data/registry.py); setting a key the chosen dataset does not read is an error.
    config.data = ml_collections.ConfigDict(dict(
        name="cifar10", image_size=32, normalize="scale", on_device=False, prefetch=2,
        dir="",  # cifar10, imagenet2012: the TFDS folder; tiny_imagenet: the HDF5 folder
        root="",  # tiny_imagenet: the unpacked tiny-imagenet-200 folder the HDF5 files are built from
        split_seed=42,  # digits, tiny_imagenet: the seed of the held-out split
        test_per_class=50,  # tiny_imagenet: images per class moved from train to the test split
        read_window_mb=64.0,  # tiny_imagenet: megabytes of rows copied per shuffled read of the HDF5 file
        digits_test_fraction=0.25,  # digits: the stratified share held out for testing
        # imagenet2012: the folder of the two manual-download tars ("" = <dir>/downloads/manual), the
        # shorter side crops are cut from (0 = image_size * 256/224), and the images (~110 KB each) of the
        # shuffle buffer of each process.
        manual_dir="", resize_size=0, shuffle_buffer=10_000,
        # folder only (data.root: one subfolder per class, or train/ val/ test/ of them): how photos become
        # squares ("aspect": shorter side, centre crop; "stretch"), and the shares of train carved off as
        # val and test when the folder has no val/ or test/.
        resize="aspect", val_fraction=0.1, test_fraction=0.1,
        # synthetic (what --mode=benchmark trains on when the dataset is absent): classes and split sizes.
        num_classes=10, synthetic_sizes=dict(train=2048, val=512, test=512)))
    config.data.augment = ml_collections.ConfigDict(dict(
        rotation=0.0, zoom=0.0, width_shift=0.0, height_shift=0.0, shear=0.0, horizontal_flip=False,
        # Current recipes' augmentation, in the train step too (all off here; docs/data.md explains each).
        # Inception random-resized-crop: area fraction and aspect-ratio ranges of the box, resized back.
        random_resized_crop=False, rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3),
        randaugment_n=0, randaugment_m=9.0,  # RandAugment layers (0: off) and magnitude on 0..10
        trivial_augment=False,  # TrivialAugmentWide (instead of RandAugment)
        random_erasing=0.0, erasing_mode="pixel",  # probability per image; fill "pixel" (noise) or "zero"
        # mixup / CutMix Beta(alpha, alpha) (0: off); with both, CutMix with mix_switch_prob per batch;
        # mix_prob: the share of batches mixed at all.
        mixup_alpha=0.0, cutmix_alpha=0.0, mix_switch_prob=0.5, mix_prob=1.0))
    # name and the module's options (cnn_flax/models: each model's fields); input_shape: () builds the model
    # for data.image_size x data.image_size RGB images, (H, W, C) for another input (the 1x1 demo's 28x28x192).
    config.model = ml_collections.ConfigDict(dict(input_shape=()))
    config.wandb = ml_collections.ConfigDict(dict(enabled=False, project="cnn_flax", name="", mode=""))
    # --mode=export: model.onnx "auto" (when jax2onnx and onnxruntime are installed), "yes" or "no";
    # tflite: also convert the SavedModel to model.tflite.
    config.export = ml_collections.ConfigDict(dict(onnx="auto", tflite=False))
    # Grad-CAM (--mode=predict --gradcam, and the worst mistakes on report.html): the layer whose feature map is
    # weighted ("": the last convolutional one; names as --mode=summary lists them), and how many of the worst
    # mistakes the report shows with the maps of their true and predicted class (0: none).
    config.gradcam = ml_collections.ConfigDict(dict(layer="", mistakes=8))
    # --mode=lr_find: the learning-rate range test, a geometric sweep from min_lr to max_lr over `steps` optimizer
    # steps of the config's model and optimizer; the loss is smoothed by an exponential moving average with this
    # factor (debiased), and the sweep stops once the smoothed loss exceeds diverge_factor x its lowest value.
    config.lr_find = ml_collections.ConfigDict(dict(min_lr=1e-7, max_lr=10.0, steps=200, smoothing=0.98,
                                                    diverge_factor=4.0))
    # --mode=benchmark: the timed seconds of each phase (bare step, inference, training loop), after its warm-up.
    config.benchmark = ml_collections.ConfigDict(dict(seconds=20.0))
    return config


def base_data_config() -> ml_collections.ConfigDict:
    """`config.data` of `base()`: the one home of its defaults."""
    return base("defaults").data


def with_defaults(data_config: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """`data_config` completed with base()'s defaults for the keys it lacks (research code may pass a few)."""
    given = data_config.to_dict() if isinstance(data_config, ml_collections.ConfigDict) else dict(data_config)
    data = base_data_config()
    with data.unlocked():
        for key, value in given.items():
            if isinstance(value, Mapping) and key in data:
                data[key].update(value)
            else:
                data[key] = value
    return data
