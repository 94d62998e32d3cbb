#!/usr/bin/env python3
"""How much does JPEG damage cost All-CNN-C on CIFAR-10? (issue 12's gap)

The only CIFAR-10 here is a JPEG copy (../shared/data/cifar10-jpg: quality
75, 4:2:0 chroma); the original binary files cannot be downloaded. The gap
to the paper could be the data's. This script measures the network's
sensitivity to more of the same damage: it re-encodes every image of the
folder at a lower quality (same 4:2:0 subsampling, libjpeg's tables through
Pillow) into a new image folder, and prints the PSNR of the new copy
against the folder it came from. The folders then go to `allcnn eval`
(the shipped model, trained at q75, tested on more damaged images) and to
`allcnn train` (a short run trained and tested at the new quality beside
one at q75, same seed and setting): docs/reproduction.md, "What JPEG
costs".

    python3 bench/jpeg_ladder.py ../shared/data/cifar10-jpg OUT/cifar10-q40 40
    allcnn eval --data OUT/cifar10-q40 --json

Needs numpy and Pillow. Takes about 15 s for the 60,000 images.
"""
import argparse
import os

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="image folder with train/ and test/ (class subfolders)")
    ap.add_argument("dest", help="the new image folder (created)")
    ap.add_argument("quality", type=int, help="JPEG quality, 1-95")
    args = ap.parse_args()
    if not 1 <= args.quality <= 95:
        ap.error(f"quality {args.quality}: Pillow takes 1 to 95")
    if os.path.exists(args.dest) and os.listdir(args.dest):
        ap.error(f"{args.dest} exists and is not empty: name a new folder")
    squared, images = 0.0, 0
    for split in ("train", "test"):
        root = os.path.join(args.source, split)
        if not os.path.isdir(root):
            ap.error(f"{root}: no such folder (the source needs train/ and test/)")
        for cls in sorted(os.listdir(root)):
            os.makedirs(os.path.join(args.dest, split, cls))
            for name in sorted(os.listdir(os.path.join(root, cls))):
                image = Image.open(os.path.join(root, cls, name)).convert("RGB")
                out = os.path.join(args.dest, split, cls, os.path.splitext(name)[0] + ".jpg")
                image.save(out, quality=args.quality, subsampling=2)
                a = np.asarray(image, dtype=np.float64)
                b = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
                squared += ((a - b) ** 2).mean()
                images += 1
    mse = squared / images
    print(f"q{args.quality}: {images} images into {args.dest}; against the source: "
          f"mean squared error {mse:.2f}, PSNR {10 * np.log10(255 ** 2 / mse):.2f} dB")


if __name__ == "__main__":
    main()
