#!/usr/bin/env python3
"""How often does the paper's start die? allcnn and PyTorch, seed by seed.

The paper's protocol (GCN 55 + ZCA 0.1, Xavier-uniform weights and zero
biases, dropout 0.2/0.5, SGD with momentum 0.9, weight decay 1e-3 on every
parameter, mean cross-entropy, the final ReLU kept) can kill every class map
at the onset of learning: all logits 0, the loss pinned at ln 10. This runs
the same short recipe in both frameworks over several seeds and counts the
deaths:

    allcnn models --json > models.json
    python3 bench/start_study.py --spec models.json --data ../shared/data/cifar10-jpg \\
        --allcnn target/release/allcnn --seeds 1,2,3,4 --out study.jsonl

Each run: a `--train-subset` of the training images (default 10,000) for
`--epochs` (3) at `--batch` (64) and `--lr` (0.05), tested after every epoch
on `--test-subset` test images (2,000). allcnn runs `allcnn train --preset
cifar10` with those overrides (its own seeded subset and ZCA fit, its
`precision` from `--allcnn-precision`); PyTorch runs here, on a class-
balanced subset picked by the seed, whitened by the same definitions
(pylearn2's GCN and ZCA, fitted on that subset), in float32 or with
`--bf16` autocast (and channels_last). A run is dead when, in each of
`--patience` consecutive training batches, at least 95% of the examples
have every logit 0 (allcnn's `dead_patience_steps` and its rule in
trainer.rs); allcnn stops such a run with an error, PyTorch's is stopped
here.

One JSON line per run on stdout (and in `--out`): framework, seed, the
test accuracy after each epoch, dead or not and from which step. Not run by
CI. Needs torch, numpy and pillow.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import AllCnnRef  # noqa: E402

# Percent of a step's examples dead from which the step is dead (allcnn's
# DEAD_STEP_PERCENT).
DEAD_STEP_PERCENT = 95


def load_split(root, split, count, seed):
    """`count` images of `root/split/<class>/*.jpg`, the same number per class,
    picked by `seed`: (uint8 [N, 32, 32, 3], labels [N])."""
    classes = sorted(os.listdir(os.path.join(root, split)))
    rng = np.random.default_rng(seed)
    per = count // len(classes)
    images, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(os.listdir(os.path.join(root, split, c)))
        for f in rng.choice(files, per, replace=False):
            with Image.open(os.path.join(root, split, c, f)) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(k)
    return np.stack(images), np.array(labels, dtype=np.int64)


def gcn(x, scale=55.0):
    """pylearn2's global_contrast_normalize (use_std=False, sqrt_bias=0) per
    image, on flat CHW float64 rows."""
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True)) / scale
    norm[norm < 1e-8] = 1.0
    return x / norm


def zca_fit(x, bias=0.1):
    """Mean and `U diag(1/sqrt(l + bias)) U^T` of the rows' covariance."""
    mean = x.mean(axis=0)
    c = x - mean
    cov = c.T @ c / x.shape[0]
    l, u = np.linalg.eigh(cov)
    w = (u * (1.0 / np.sqrt(np.maximum(l, 0.0) + bias))) @ u.T
    return mean, w


def whiten(images, mean, w):
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1).astype(np.float64)
    out = (gcn(flat) - mean) @ w
    return torch.from_numpy(out.astype(np.float32)).reshape(len(images), 3, 32, 32)


def xavier(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def torch_run(a, spec, seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.time()
    xtr, ytr = load_split(a.data, "train", a.train_subset, seed)
    xte, yte = load_split(a.data, "test", a.test_subset, seed)
    flat = gcn(xtr.transpose(0, 3, 1, 2).reshape(len(xtr), -1).astype(np.float64))
    mean, w = zca_fit(flat)
    xtr, xte = whiten(xtr, mean, w), whiten(xte, mean, w)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
    prep = time.time() - t0
    model = xavier(AllCnnRef(spec, 10))
    fmt = torch.channels_last if a.bf16 else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(seed)
    accs, dead_since, zero_run, step = [], None, 0, 0
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(order) - a.batch + 1, a.batch):
            idx = order[i : i + a.batch]
            x = xtr[idx].contiguous(memory_format=fmt)
            lr = a.lr * min(1.0, (step + 1) / a.warmup) if a.warmup else a.lr
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # allcnn's rule (trainer.rs, DEAD_STEP_PERCENT): a step is dead
            # when at least 95% of its examples have every logit 0; a run
            # that has died keeps a few examples alive.
            dead_examples = int((logits == 0).all(dim=1).sum())
            zero_run = zero_run + 1 if dead_examples * 100 >= DEAD_STEP_PERCENT * len(idx) else 0
            if zero_run >= a.patience and dead_since is None:
                dead_since = step + 1 - a.patience
            step += 1
            if dead_since is not None:
                break
        model.eval()
        correct = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            for i in range(0, len(xte), 500):
                correct += (model(xte[i : i + 500].contiguous(memory_format=fmt)).argmax(1) == yte[i : i + 500]).sum().item()
        accs.append(correct / len(xte))
        if dead_since is not None:
            break
    return {
        "framework": f"pytorch {torch.__version__}" + (" bf16+cl" if a.bf16 else " f32"),
        "seed": seed,
        "test_accuracy": accs,
        "dead": dead_since is not None,
        "dead_since_step": dead_since,
        "seconds": round(time.time() - t0, 1),
        "prep_seconds": round(prep, 1),
    }


def allcnn_run(a, seed):
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        cmd = [
            a.allcnn, "train", "--preset", "cifar10", "--data", a.data, "--out", out,
            "--precision", a.allcnn_precision,
            f"seed={seed}", f"epochs={a.epochs}", f"batch_size={a.batch}", f"lr={a.lr}",
            f"data.train_subset={a.train_subset}", f"data.test_subset={a.test_subset}",
            f"dead_patience_steps={a.patience}", f"warmup_steps={a.warmup}",
            "checkpoint_every_steps=0",
        ]
        p = subprocess.run(cmd, capture_output=True, text=True)
        accs = []
        metrics = os.path.join(out, "metrics.jsonl")
        if os.path.exists(metrics):
            for line in open(metrics):
                r = json.loads(line)
                if r.get("type") == "epoch":
                    accs.append(r["test_accuracy"])
        m = re.search(r"every class map is dead since step (\d+)", p.stderr)
        dead = m is not None and p.returncode != 0
        if p.returncode != 0 and not dead:
            raise SystemExit(f"allcnn failed (seed {seed}):\n{p.stderr[-2000:]}")
    return {
        "framework": f"allcnn {a.allcnn_precision}",
        "seed": seed,
        "test_accuracy": accs,
        "dead": dead,
        "dead_since_step": int(m.group(1)) if dead else None,
        "seconds": round(time.time() - t0, 1),
    }


def emit(row, out):
    """Prints `row` as one JSON line, and appends it to the file `out` too
    (when given)."""
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", required=True, help="`allcnn models --json` output")
    ap.add_argument("--data", required=True, help="image folder with train/ and test/")
    ap.add_argument("--allcnn", help="the allcnn binary (omit: PyTorch only)")
    ap.add_argument("--allcnn-precision", default="bf16", choices=["f32", "bf16", "auto"])
    ap.add_argument("--no-torch", action="store_true", help="allcnn only")
    ap.add_argument("--seeds", default="1,2,3,4")
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=0, help="linear lr warm-up steps (0: the paper's none)")
    ap.add_argument("--patience", type=int, default=60, help="consecutive mostly dead batches (95%% of the examples with all logits 0) that make a run dead")
    ap.add_argument("--bf16", action="store_true", help="PyTorch: bf16 autocast + channels_last")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", help="append the JSON lines here too")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = next(s for s in json.load(open(a.spec)) if s["name"] == "all-cnn-c")
    for seed in [int(s) for s in a.seeds.split(",")]:
        runs = []
        if a.allcnn:
            runs.append(allcnn_run(a, seed))
        if not a.no_torch:
            runs.append(torch_run(a, spec, seed))
        for r in runs:
            r.update(lr=a.lr, batch=a.batch, warmup=a.warmup, epochs=a.epochs,
                     train_subset=a.train_subset, ln10=math.log(10))
            emit(r, a.out)


if __name__ == "__main__":
    main()
