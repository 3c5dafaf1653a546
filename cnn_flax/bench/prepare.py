"""Throughput of `prepare` on a folder of JPEG photos: how long decoding your own images once will take.

python -m cnn_flax.bench.prepare --images 2000 --photo 500x375 --image_size 64

Writes the photos once (smooth random colour fields, JPEG quality 90, four class folders) under --dir,
then times a full prepare into HDF5 (every worker process, the progress bar, the writes) and prints
decoded images per second.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
from PIL import Image

from cnn_flax.bench import cli
from cnn_flax.errors import UserError


def write_photos(root: str, count: int, width: int, height: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for k in range(count):
        folder = os.path.join(root, f"class_{k % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        photo.save(os.path.join(folder, f"photo_{k:05d}.jpg"), quality=90)


def main(argv: list[str] | None = None) -> int:
    from cnn_flax.atomic import partial_path, remove_stale_partials
    from cnn_flax.data.sources.folder import build_folder

    parser = cli.parser(__doc__)
    parser.add_argument("--dir", default="/tmp/cnn_flax_folder_bench")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--photo", default="500x375", help="WIDTHxHEIGHT of the JPEGs written")
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args(argv)
    width, _, height = args.photo.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise UserError(f"--photo {args.photo}: give WIDTHxHEIGHT in pixels, e.g. 500x375")
    cli.check_positive(images=args.images, image_size=args.image_size, photo_width=int(width),
                       photo_height=int(height))
    root = os.path.join(args.dir, f"photos_{args.images}_{args.photo}")
    if not os.path.isdir(root):
        remove_stale_partials(root)
        partial = partial_path(root)
        write_photos(partial, args.images, int(width), int(height))
        os.replace(partial, root)
    out = os.path.join(args.dir, "prepared")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build_folder(root, out, image_size=args.image_size)
    seconds = time.perf_counter() - start
    figures = dict(images=args.images, photo=args.photo, image_size=args.image_size, prepare_s=seconds,
                   img_per_s=args.images / seconds, cores=os.cpu_count())
    print(cli.format_line("prepare", figures, list(figures)))
    return 0


if __name__ == "__main__":
    cli.run(main)
