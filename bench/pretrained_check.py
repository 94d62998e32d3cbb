#!/usr/bin/env python3
"""Rebuild an allcnn weights file from its own metadata, without allcnn.

An independent check of the shipped weights and of the documented format
(docs/weights-format.md): reads a self-describing allcnn safetensors file with
numpy only, rebuilds the network from `allcnn.spec`, the GCN + ZCA transform
from `allcnn.preprocessing` (full or low-rank whitening), and the class names
from `allcnn.class_names`, then classifies an image folder
(`ROOT/<class>/<image>`) and prints the accuracy as JSON.

    pip install numpy pillow
    python3 bench/pretrained_check.py \
        allcnn-models/pretrained/all-cnn-c-cifar10/model.safetensors \
        ../shared/data/cifar10-jpg/test --limit 1000

Compare with `allcnn eval --data ../shared/data/cifar10-jpg` on the same
images (the JPEG decoders differ slightly, so a handful of borderline images
may flip).
"""

import argparse
import json
import os
import random

import numpy as np
from PIL import Image

# safetensors element types -> numpy (little-endian); BF16 is widened below.
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1"}


def read_safetensors(path):
    """(metadata, {name: array}) of a safetensors file, read with numpy alone:
    an 8-byte little-endian header length, the JSON header, then the data."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=DTYPES[info["dtype"]])
        tensors[name] = a.reshape(info["shape"])
    return meta, tensors


def whitening(meta, t):
    """The ZCA matrix W (d x d) from a version 1 (full) or 2 (low-rank) record."""
    if meta.get("version", 1) == 1:
        return t["preprocess.zca.whitening"].astype(np.float64)
    b = t["preprocess.zca.basis"].astype(np.float64)  # k x d, stored as f16
    s = t["preprocess.zca.scales"].astype(np.float64)  # k
    c = float(meta["isotropic"])
    return c * np.eye(b.shape[1]) + (b.T * s) @ b


def preprocess(pixels, meta, mean, w):
    """GCN (centre, scale the L2 norm to gcn_scale) then ZCA, on N x d floats."""
    x = pixels.astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True)) / meta["gcn_scale"]
    norm[norm < 1e-8] = 1.0
    return ((x / norm) - mean) @ w


def conv_relu(x, weight, bias, stride, pad):
    n, c, h, wd = x.shape
    o, _, k, _ = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    cols = np.empty((n, c, k, k, oh, ow), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    cols = cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * k * k)
    y = cols @ weight.reshape(o, -1).T + bias
    return np.maximum(y, 0).reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


def max_pool(x):
    """3x3, stride 2, padded by 1 with -inf (the padding never wins)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, xp[:, :, i : i + 2 * oh : 2, j : j + 2 * ow : 2])
    return out


def forward(spec, t, x):
    conv = 0
    for layer in spec["layers"]:
        kind = layer["type"]
        if kind == "conv":
            conv += 1
            x = conv_relu(
                x,
                t[f"conv{conv}.weight"].astype(np.float64),
                t[f"conv{conv}.bias"].astype(np.float64),
                layer["stride"],
                layer["padding"],
            )
        elif kind == "max_pool" or kind == "maxpool":
            x = max_pool(x)
        elif kind == "dropout":
            pass  # identity at evaluation
        else:
            raise ValueError(f"unknown layer type {kind!r}")
    return x.mean(axis=(2, 3))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("weights")
    ap.add_argument("folder", help="ROOT/<class>/<image> (e.g. cifar10-jpg/test)")
    ap.add_argument("--limit", type=int, default=0, help="a seeded random sample of N images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()

    meta, t = read_safetensors(args.weights)
    spec = json.loads(meta["allcnn.spec"])
    pre = json.loads(meta["allcnn.preprocessing"])
    names = json.loads(meta["allcnn.class_names"])
    assert pre["kind"] == "gcn_zca", pre
    mean = t["preprocess.zca.mean"].astype(np.float64)
    w = whitening(pre, t)

    files = []
    for label, name in enumerate(names):
        d = os.path.join(args.folder, name)
        files += [(os.path.join(d, f), label) for f in sorted(os.listdir(d))]
    if args.limit and args.limit < len(files):
        files = sorted(random.Random(args.seed).sample(files, args.limit))

    correct = 0
    for start in range(0, len(files), args.batch):
        chunk = files[start : start + args.batch]
        px = np.stack(
            [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).transpose(2, 0, 1).ravel() for p, _ in chunk]
        )
        x = preprocess(px, pre, mean, w).reshape(len(chunk), *pre["shape"])
        logits = forward(spec, t, x)
        correct += int((logits.argmax(axis=1) == np.array([l for _, l in chunk])).sum())
    print(
        json.dumps(
            {
                "weights": args.weights,
                "images": len(files),
                "top1": correct / len(files),
                "whitening": "low-rank" if pre.get("version", 1) == 2 else "full",
                "rank": pre.get("rank"),
            }
        )
    )


if __name__ == "__main__":
    main()
