"""The augmentations of current recipes (timm, torchvision references), read from `data.augment`.

Next to the deck's affine warp they run in the train step, in timm's order: random-resized-crop and
RandAugment/TrivialAugment on the uint8 pixels, then normalisation (and the deck's warp), then random
erasing on the normalised floats, and last mixup/CutMix on the batch (`Mixing`, applied by the step
because it also changes the targets). Each draws from its own stream of the step's augmentation key
(fold_in 1..4; the deck's warp keeps the key itself), so switching one on leaves the others' draws as
they were and a resumed run, which restarts from the same step, draws the same numbers.

A switch absent from `data.augment` is off; the parameters of a switch that is on are read from the
config (their defaults live in cnn_flax/defaults.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from cnn_flax.data.augment.crops import random_resized_crop
from cnn_flax.data.augment.erasing import ERASING_MODES, random_erasing
from cnn_flax.data.augment.mixing import Mixing
from cnn_flax.data.augment.policies import randaugment, trivial_augment
from cnn_flax.defaults import with_defaults
from cnn_flax.errors import UserError

CROP_STREAM, POLICY_STREAM, ERASING_STREAM = 1, 2, 3  # mixing.py draws from stream 4
MODERN_KEYS = ("random_resized_crop", "rrc_scale", "rrc_ratio", "randaugment_n", "randaugment_m",
               "trivial_augment", "random_erasing", "erasing_mode", "mixup_alpha", "cutmix_alpha",
               "mix_switch_prob", "mix_prob")


@dataclass(frozen=True)
class ModernAugment:
    crop: tuple[tuple[float, float], tuple[float, float]] | None = None  # (scale, ratio)
    randaugment: tuple[int, float] | None = None  # (n, m)
    trivial: bool = False
    erasing: float = 0.0
    erasing_mode: str = "pixel"

    @property
    def on_pixels(self) -> bool:
        return self.crop is not None or self.randaugment is not None or self.trivial

    def augment_pixels(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """Random-resized-crop, then RandAugment or TrivialAugment, on uint8 [N, H, W, C] images."""
        if self.crop is not None:
            images = random_resized_crop(jax.random.fold_in(rng, CROP_STREAM), images, *self.crop)
        if self.randaugment is not None:
            images = randaugment(jax.random.fold_in(rng, POLICY_STREAM), images, *self.randaugment)
        if self.trivial:
            images = trivial_augment(jax.random.fold_in(rng, POLICY_STREAM), images)
        return images

    def augment_normalized(self, rng: jax.Array, x: jax.Array) -> jax.Array:
        if self.erasing > 0:
            x = random_erasing(jax.random.fold_in(rng, ERASING_STREAM), x, self.erasing, self.erasing_mode)
        return x


def _read(augment, key: str):
    if key not in augment:
        raise UserError(f"data.augment.{key} is missing; its default is in cnn_flax/defaults.py base()")
    return augment[key]


def _range(augment, key: str, upper: float | None) -> tuple[float, float]:
    value = _read(augment, key)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"data.augment.{key}={value!r} must be a pair (low, high)") from None
    if not 0 < low <= high or (upper is not None and high > upper):
        bound = f" <= {upper}" if upper is not None else ""
        raise UserError(f"data.augment.{key}={value!r} needs 0 < low <= high{bound}")
    return low, high


def _probability(augment, key: str) -> float:
    value = _read(augment, key)
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise UserError(f"data.augment.{key}={value!r} must be a probability in [0, 1]")
    return float(value)


def modern_options(augment) -> ModernAugment:
    """The per-image augmentations switched on in `data.augment` (a mapping with every key of base()'s)."""
    crop = randaug = None
    if _read(augment, "random_resized_crop"):
        crop = (_range(augment, "rrc_scale", 1.0), _range(augment, "rrc_ratio", None))
    layers = _read(augment, "randaugment_n")
    if not isinstance(layers, int) or layers < 0:
        raise UserError(f"data.augment.randaugment_n={layers!r} must be an integer >= 0 (0 turns it off)")
    if layers:
        magnitude = _read(augment, "randaugment_m")
        if not isinstance(magnitude, int | float) or not 0 <= magnitude <= 10:
            raise UserError(f"data.augment.randaugment_m={magnitude!r} must be in [0, 10] (timm's scale)")
        randaug = (layers, float(magnitude))
    trivial = bool(_read(augment, "trivial_augment"))
    if trivial and randaug:
        raise UserError("data.augment.randaugment_n and trivial_augment are both on; choose one")
    erasing = _probability(augment, "random_erasing")
    mode = _read(augment, "erasing_mode") if erasing else "pixel"
    if mode not in ERASING_MODES:
        raise UserError(f"data.augment.erasing_mode={mode!r} is unknown; use one of {', '.join(ERASING_MODES)}")
    return ModernAugment(crop, randaug, trivial, erasing, mode)


def make_mixing(data_config) -> Mixing | None:
    """Mixup/CutMix of `data_config.augment` (missing keys: base()'s defaults), or None when both alphas are 0."""
    augment = with_defaults(data_config).augment
    alphas = {}
    for key in ("mixup_alpha", "cutmix_alpha"):
        value = augment[key]
        if not isinstance(value, int | float) or value < 0:
            raise UserError(f"data.augment.{key}={value!r} must be a number >= 0 (0 turns it off)")
        alphas[key] = float(value)
    if not any(alphas.values()):
        return None
    return Mixing(alphas["mixup_alpha"], alphas["cutmix_alpha"], _probability(augment, "mix_switch_prob"),
                  _probability(augment, "mix_prob"))
