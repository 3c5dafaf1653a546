"""Mixup and CutMix inside the train step: a batch mixed with a permutation of itself, and soft targets.

One draw per batch, as timm's `Mixup` makes it: with probability `prob` the batch is mixed; when both
alphas are set, CutMix is chosen with probability `switch_prob`, otherwise mixup. Mixup blends whole
images with weight lam ~ Beta(alpha, alpha); CutMix pastes a box of the partner image whose side is
sqrt(1 - lam) of the image's, centred uniformly and clipped at the borders, and then sets lam to the
share of the image actually kept, so the label weights match the pixels. The partner of image i is
image perm[i] of the same batch (a fresh permutation each step). Everything is a function of the key,
and the draw is returned so that a test, or a report, can recompute the result independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

STREAM = 4  # the fold of the step's augmentation key that mixing draws from (augment_modern.py: 1..3)


class MixDraw(NamedTuple):
    """One batch's mixing: partner indices, the weight of each image's own label, and the CutMix box."""

    perm: jax.Array  # [N] int32: image i is mixed with image perm[i]
    lam: jax.Array  # float32 scalar: weight of the own image and label (1: not mixed)
    cutmix: jax.Array  # bool scalar: box pasting (True) or blending (False)
    box: jax.Array  # [4] int32 (row0, row1, col0, col1), half-open; empty unless CutMix


@dataclass(frozen=True)
class Mixing:
    mixup_alpha: float
    cutmix_alpha: float
    switch_prob: float = 0.5
    prob: float = 1.0

    def draw(self, rng: jax.Array, n: int, height: int, width: int) -> MixDraw:
        """The mixing of an [n, height, width, C] batch, from the step's augmentation key `rng`."""
        keys = jax.random.split(jax.random.fold_in(rng, STREAM), 6)
        apply = jax.random.bernoulli(keys[0], self.prob)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = jax.random.bernoulli(keys[1], self.switch_prob)
        else:
            cutmix = jnp.asarray(self.cutmix_alpha > 0)
        one = jnp.ones((), jnp.float32)
        lam_mixup = jax.random.beta(keys[2], self.mixup_alpha, self.mixup_alpha) if self.mixup_alpha > 0 else one
        lam_cutmix = jax.random.beta(keys[3], self.cutmix_alpha, self.cutmix_alpha) if self.cutmix_alpha > 0 else one
        box = cutmix_box(keys[4], lam_cutmix, height, width)
        box = jnp.where(cutmix & apply, box, jnp.zeros(4, jnp.int32))
        kept = 1.0 - ((box[1] - box[0]) * (box[3] - box[2])).astype(jnp.float32) / (height * width)
        lam = jnp.where(apply, jnp.where(cutmix, kept, lam_mixup.astype(jnp.float32)), 1.0)
        return MixDraw(jax.random.permutation(keys[5], n).astype(jnp.int32), lam, cutmix, box)

    def images(self, images: jax.Array, draw: MixDraw) -> jax.Array:
        return mix_images(images, draw)

    def targets(self, labels: jax.Array, draw: MixDraw, num_classes: int) -> jax.Array:
        return mix_targets(labels, draw, num_classes)


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """timm's box: sides int(size * sqrt(1 - lam)), centre uniform over the pixels, clipped to the image."""
    cut = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * cut).astype(jnp.int32)
    cut_w = jnp.floor(width * cut).astype(jnp.int32)
    row_key, col_key = jax.random.split(rng)
    centre_r = jax.random.randint(row_key, (), 0, height)
    centre_c = jax.random.randint(col_key, (), 0, width)
    return jnp.stack([
        jnp.clip(centre_r - cut_h // 2, 0, height), jnp.clip(centre_r + cut_h // 2, 0, height),
        jnp.clip(centre_c - cut_w // 2, 0, width), jnp.clip(centre_c + cut_w // 2, 0, width),
    ]).astype(jnp.int32)


def mix_images(images: jax.Array, draw: MixDraw) -> jax.Array:
    """Float [N, H, W, C] images mixed with their partners by `draw` (unchanged when lam is 1)."""
    h, w = images.shape[1:3]
    partner = jnp.take(images, draw.perm, axis=0)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = (rows >= draw.box[0]) & (rows < draw.box[1]) & (cols >= draw.box[2]) & (cols < draw.box[3])
    pasted = jnp.where(inside[None, :, :, None], partner, images)
    lam = draw.lam.astype(images.dtype)
    blended = images * lam + partner * (1 - lam)
    return jnp.where(draw.cutmix, pasted, blended)


def mix_targets(labels: jax.Array, draw: MixDraw, num_classes: int) -> jax.Array:
    """[N, num_classes] float32: lam * onehot(label) + (1 - lam) * onehot(partner's label)."""
    own = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    partner = jax.nn.one_hot(jnp.take(labels, draw.perm, axis=0), num_classes, dtype=jnp.float32)
    return draw.lam * own + (1.0 - draw.lam) * partner
