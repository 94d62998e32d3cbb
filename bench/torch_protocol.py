#!/usr/bin/env python3
"""The paper's training protocol in PyTorch, epoch by epoch, beside an allcnn run.

Is a gap between an allcnn run and the public Caffe log (mateuszbuda/ALL-CNN)
allcnn's, or the data's? This trains All-CNN-C in PyTorch on the same image
folder, whitened by the same definitions (pylearn2's GCN 55 and ZCA 0.1,
fitted on the training images), with the setting of an allcnn
`train-config.toml`: batch, lr, linear warm-up, momentum 0.9, weight decay
on every parameter, dropout 0.2/0.5, Caffe's `xavier` filler (LeCun
uniform) or Glorot's, flips and translations or none. After every epoch it
prints one JSON line in the form of the epoch records of allcnn's
`metrics.jsonl` (`"type": "epoch"`, `epoch` counted from 0): the epoch's
mean training loss and accuracy (dropout on), the test accuracy and loss on
all test images, and the classes whose logit was 0 for every one of their
training examples in the epoch (`silent_classes`, allcnn's field: class
maps silent all epoch).

    allcnn models --json > models.json
    python3 bench/torch_protocol.py --spec models.json --data ../shared/data/cifar10-jpg \\
        --batch 256 --lr 0.05 --warmup 300 --init lecun-uniform --epochs 15 --out torch.jsonl

Compare with the run's `metrics.jsonl` and the log:
`bench/compare_caffe_log.py torch.jsonl ALL_CNN_C.log.test` reads it as
it reads a run's. Not run by CI. Needs torch, numpy, pillow.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import AllCnnRef  # noqa: E402
from start_study import emit, gcn, load_split, whiten, zca_fit  # noqa: E402


def init_weights(model, kind):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if kind == "lecun-uniform":
                fan_in = m.weight[0].numel()
                a = math.sqrt(3.0 / fan_in)
                nn.init.uniform_(m.weight, -a, a)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def flip_translate(x, gen, max_shift):
    """Random horizontal flip and a shift of up to `max_shift` pixels in each
    direction with zero fill, per example (allcnn's FlipTranslate)."""
    n = x.shape[0]
    flips = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flips[:, None, None, None], x.flip(3), x)
    k = max_shift
    padded = F.pad(x, (k, k, k, k))
    dy = torch.randint(0, 2 * k + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * k + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", required=True, help="`allcnn models --json` output")
    ap.add_argument("--data", required=True, help="image folder with train/ and test/")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    ap.add_argument("--weight-decay", type=float, default=1e-3)
    ap.add_argument("--init", choices=["lecun-uniform", "xavier-uniform"], default="lecun-uniform")
    ap.add_argument("--augment", choices=["none", "flip-translate"], default="none")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast + channels_last")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", help="append the JSON lines here too")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    spec = next(s for s in json.load(open(a.spec)) if s["name"] == "all-cnn-c")

    t0 = time.time()
    xtr, ytr = load_split(a.data, "train", 50000, a.seed)
    xte, yte = load_split(a.data, "test", 10000, a.seed)
    classes = sorted(os.listdir(os.path.join(a.data, "train")))
    flat = gcn(xtr.transpose(0, 3, 1, 2).reshape(len(xtr), -1).astype(np.float64))
    mean, w = zca_fit(flat)
    del flat
    xtr, xte = whiten(xtr, mean, w), whiten(xte, mean, w)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
    prep = time.time() - t0

    model = AllCnnRef(spec, 10)
    init_weights(model, a.init)
    fmt = torch.channels_last if a.bf16 else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.weight_decay)
    gen = torch.Generator().manual_seed(a.seed)
    step = 0
    meta = {"framework": f"pytorch {torch.__version__}" + (" bf16+cl" if a.bf16 else " f32"),
            "batch": a.batch, "lr": a.lr, "warmup": a.warmup, "init": a.init,
            "augment": a.augment, "seed": a.seed, "weight_decay": a.weight_decay,
            "prep_seconds": round(prep, 1)}
    for epoch in range(a.epochs):
        te = time.time()
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        alive = torch.zeros(10, dtype=torch.bool)
        for i in range(0, len(order) - a.batch + 1, a.batch):
            idx = order[i : i + a.batch]
            x = xtr[idx]
            if a.augment == "flip-translate":
                x = flip_translate(x, gen, 5)
            x = x.contiguous(memory_format=fmt)
            lr = a.lr * min(1.0, (step + 1) / a.warmup) if a.warmup else a.lr
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                logits = model(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == ytr[idx]).sum().item()
            seen += len(idx)
            own = logits.gather(1, ytr[idx][:, None]).squeeze(1) > 0
            alive |= torch.zeros(10, dtype=torch.bool).index_put((ytr[idx][own],), torch.tensor(True))
            step += 1
        train_seconds = time.time() - te
        model.eval()
        test_correct, test_loss = 0, 0.0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            for i in range(0, len(xte), 500):
                out = model(xte[i : i + 500].contiguous(memory_format=fmt)).float()
                test_correct += (out.argmax(1) == yte[i : i + 500]).sum().item()
                test_loss += F.cross_entropy(out, yte[i : i + 500], reduction="sum").item()
        row = dict(meta, type="epoch", epoch=epoch, step=step,
                   train_loss=round(loss_sum / seen, 4), train_accuracy=round(correct / seen, 4),
                   test_accuracy=test_correct / len(xte), test_loss=round(test_loss / len(xte), 4),
                   silent_classes=[classes[int(c)] for c in torch.nonzero(~alive).flatten()],
                   epoch_seconds=round(train_seconds, 1), images_per_sec=round(seen / train_seconds, 1))
        emit(row, a.out)


if __name__ == "__main__":
    main()
