"""Throughput of `prepare` on a folder of JPEG photos: how long decoding your own images once will take.

python -m cnn_flax.bench.prepare --images 2000 --photo 500x375 --image_size 64

Writes the photos once (smooth random colour fields, JPEG quality 90, four class folders) under --dir,
then times a full prepare into HDF5 (every worker process, the progress bar, the writes) and prints
decoded images per second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np
from PIL import Image


def write_photos(root: str, count: int, width: int, height: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for k in range(count):
        folder = os.path.join(root, f"class_{k % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        photo.save(os.path.join(folder, f"photo_{k:05d}.jpg"), quality=90)


def main() -> None:
    from cnn_flax.atomic import partial_path, remove_stale_partials
    from cnn_flax.data.sources.folder import build_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/cnn_flax_folder_bench")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--photo", default="500x375", help="WIDTHxHEIGHT of the JPEGs written")
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args()
    width, height = (int(v) for v in args.photo.split("x"))
    root = os.path.join(args.dir, f"photos_{args.images}_{args.photo}")
    if not os.path.isdir(root):
        remove_stale_partials(root)
        partial = partial_path(root)
        write_photos(partial, args.images, width, height)
        os.replace(partial, root)
    out = os.path.join(args.dir, "prepared")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build_folder(root, out, image_size=args.image_size)
    seconds = time.perf_counter() - start
    print(f"prepare: {args.images} JPEGs {args.photo} -> {args.image_size}x{args.image_size} in {seconds:.1f} s: "
          f"{args.images / seconds:,.0f} img/s on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
