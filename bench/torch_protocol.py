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

The whole schedule (350 epochs, x0.1 at 200, 250 and 300) is days on a
2-core CPU but minutes on a GPU: `--device cuda --epochs 350 --milestones
200,250,300` keeps the whitened images on the GPU, draws the batches and
the augmentation there (from the same seeded CPU generator), and reads
the loss back once per epoch; `--time-limit S` stops between epochs so
that the lines written so far are not lost (bench/gpu-protocol.sh runs it
on a lent GPU machine).
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


def draw_shifts(gen, n, max_shift):
    """One batch's draws for [`flip_translate`] from the CPU generator
    `gen`: flips, then dy, then dx (allcnn's FlipTranslate's order)."""
    flips = torch.rand(n, generator=gen) < 0.5
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return flips, dy, dx


def flip_translate(x, flips, dy, dx, max_shift):
    """Horizontal flips where `flips`, then shifts by (dy, dx) - max_shift
    pixels with zero fill, per example, on `x`'s device (the draws there
    too)."""
    n, _, h, w = x.shape
    dev = x.device
    k = max_shift
    x = torch.where(flips[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (k, k, k, k)).permute(0, 2, 3, 1)  # N, H+2k, W+2k, C
    rows = dy[:, None] + torch.arange(h, device=dev)  # N, H
    cols = dx[:, None] + torch.arange(w, device=dev)  # N, W
    picked = padded[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2)


def lr_at(a, step, epoch):
    """The linear warm-up over the first `a.warmup` steps, times `a.gamma`
    for each milestone epoch (counted from 0) reached."""
    warm = min(1.0, (step + 1) / a.warmup) if a.warmup else 1.0
    drops = sum(epoch >= m for m in a.milestones)
    return a.lr * warm * a.gamma**drops


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
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--milestones", default="", help="epochs (from 0) where the lr drops, e.g. 200,250,300")
    ap.add_argument("--gamma", type=float, default=0.1, help="the lr's factor at each milestone")
    ap.add_argument("--train-images", type=int, default=50000, help="fewer for a smoke test")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds: stop between epochs before this")
    ap.add_argument("--save", help="write the final state_dict here (torch.save)")
    a = ap.parse_args()
    a.milestones = [int(m) for m in a.milestones.split(",") if m]
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    spec = next(s for s in json.load(open(a.spec)) if s["name"] == "all-cnn-c")

    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t0 = time.time()
    xtr, ytr = load_split(a.data, "train", a.train_images, a.seed)
    xte, yte = load_split(a.data, "test", a.test_images, a.seed)
    classes = sorted(os.listdir(os.path.join(a.data, "train")))
    flat = gcn(xtr.transpose(0, 3, 1, 2).reshape(len(xtr), -1).astype(np.float64))
    mean, w = zca_fit(flat)
    del flat
    xtr, xte = whiten(xtr, mean, w), whiten(xte, mean, w)
    xtr, xte = xtr.to(dev), xte.to(dev)
    ytr, yte = torch.from_numpy(ytr).to(dev), torch.from_numpy(yte).to(dev)
    prep = time.time() - t0

    model = AllCnnRef(spec, 10)
    init_weights(model, a.init)
    fmt = torch.channels_last if a.bf16 else torch.contiguous_format
    model = model.to(dev, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.weight_decay)
    gen = torch.Generator().manual_seed(a.seed)
    step = 0
    meta = {"framework": f"pytorch {torch.__version__}" + (" bf16+cl" if a.bf16 else " f32"),
            "batch": a.batch, "lr": a.lr, "warmup": a.warmup, "init": a.init,
            "augment": a.augment, "seed": a.seed, "weight_decay": a.weight_decay,
            "milestones": a.milestones, "device": str(dev), "prep_seconds": round(prep, 1)}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    longest = 0.0
    for epoch in range(a.epochs):
        if a.time_limit and time.time() - t0 + longest > a.time_limit:
            emit(dict(meta, type="stopped", epoch=epoch, step=step,
                      reason=f"--time-limit {a.time_limit:g} s: epoch {epoch} would not end in time"), a.out)
            break
        sync()
        te = time.time()
        model.train()
        # The epoch's draws, made on the CPU in the order of a batch-by-batch
        # loop and sent to the device at once (a copy from pageable memory
        # per step would wait for the GPU every step).
        order = torch.randperm(len(xtr), generator=gen)
        steps = len(order) // a.batch
        if a.augment == "flip-translate":
            draws = [draw_shifts(gen, a.batch, 5) for _ in range(steps)]
            shifts = [torch.stack(d).to(dev) for d in zip(*draws)]  # flips, dy, dx: [steps, batch]
        order = order.to(dev)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), dtype=torch.long, device=dev)
        alive = torch.zeros(10, device=dev)
        seen = 0
        for s in range(steps):
            idx = order[s * a.batch : (s + 1) * a.batch]
            x, y = xtr[idx], ytr[idx]
            if a.augment == "flip-translate":
                x = flip_translate(x, *(t[s] for t in shifts), 5)
            x = x.contiguous(memory_format=fmt)
            for group in opt.param_groups:
                group["lr"] = lr_at(a, step, epoch)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
                logits = model(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
            own = logits.gather(1, y[:, None]).squeeze(1) > 0
            alive.index_add_(0, y, own.float())
            step += 1
        sync()
        train_seconds = time.time() - te
        longest = max(longest, train_seconds * 1.2)
        model.eval()
        test_correct = torch.zeros((), dtype=torch.long, device=dev)
        test_loss = torch.zeros((), device=dev)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            for i in range(0, len(xte), 500):
                out = model(xte[i : i + 500].contiguous(memory_format=fmt)).float()
                test_correct += (out.argmax(1) == yte[i : i + 500]).sum()
                test_loss += F.cross_entropy(out, yte[i : i + 500], reduction="sum")
        row = dict(meta, type="epoch", epoch=epoch, step=step, last_lr=lr_at(a, step - 1, epoch),
                   train_loss=round(loss_sum.item() / seen, 4), train_accuracy=round(correct.item() / seen, 4),
                   test_accuracy=test_correct.item() / len(xte), test_loss=round(test_loss.item() / len(xte), 4),
                   silent_classes=[classes[int(c)] for c in torch.nonzero(alive == 0).flatten()],
                   epoch_seconds=round(train_seconds, 1), images_per_sec=round(seen / train_seconds, 1))
        emit(row, a.out)
    if a.save:
        torch.save(model.state_dict(), a.save)


if __name__ == "__main__":
    main()
