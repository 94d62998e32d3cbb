#!/usr/bin/env python3
"""PyTorch reference for `allcnn bench`: the same models, batch sizes and step.

The architecture is read from `allcnn models --json`, so both programs run
exactly the same layers (dropout, 3x3/2 max-pool padded by 1, ReLU after every
conv, spatial mean as the logits). The timed step matches `allcnn bench`:

* infer: eval-mode forward of a fixed batch;
* train: train-mode forward (dropout on), mean softmax cross-entropy,
  backward to every parameter and torch.optim.SGD(momentum 0.9,
  weight_decay 1e-3) update.

It prints one JSON line with the same fields as `allcnn bench`, so the ratio
can be read off two lines measured side by side on one machine:

    allcnn models --json > models.json
    python3 bench/pytorch_reference.py --spec models.json --model all-cnn-c --batch 64 --mode train
    python3 bench/pytorch_reference.py --spec models.json --model all-cnn-c --batch 64 --mode train --bf16 --channels-last
    allcnn bench --model all-cnn-c --batch 64 --mode train

Needs torch (any 2.x). Not run by CI. `--threads` defaults to torch's own
choice; pass the same thread count as RAYON_NUM_THREADS for allcnn.
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class AllCnnRef(nn.Module):
    """A model built from one entry of `allcnn models --json`."""

    def __init__(self, spec, classes):
        super().__init__()
        self.layers = nn.ModuleList()
        self.kinds = []
        channels = 3
        convs = [l for l in spec["layers"] if l["type"] == "conv"]
        seen = 0
        for layer in spec["layers"]:
            kind = layer["type"]
            if kind == "conv":
                seen += 1
                out = classes if seen == len(convs) else layer["out"]
                conv = nn.Conv2d(
                    channels,
                    out,
                    layer["kernel"],
                    stride=layer["stride"],
                    padding=layer["padding"],
                )
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                self.layers.append(conv)
                channels = out
            elif kind == "max_pool":
                self.layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            elif kind == "dropout":
                self.layers.append(nn.Dropout(layer["rate"]))
            else:
                raise SystemExit(f"unknown layer type {kind!r} in the spec")
            self.kinds.append(kind)

    def forward(self, x):
        for kind, layer in zip(self.kinds, self.layers):
            x = layer(x)
            if kind == "conv":
                x = F.relu(x)
        return x.mean(dim=(2, 3))


def peak_rss_mib():
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="output of `allcnn models --json` (a file, or - for stdin)")
    p.add_argument("--model", default="all-cnn-c")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--iters", type=int, default=5, help="timed iterations, after the warm-up ones")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (as `allcnn bench`)")
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="torch.autocast to bfloat16 (f32 weights, bf16 convolutions): PyTorch's fastest CPU path "
        "with --channels-last on CPUs with AVX512-BF16 or AMX",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="on CUDA, let cuDNN and cuBLAS use TF32 tensor cores for f32 (PyTorch's default for "
        "convolutions; off here unless asked, so that the f32 row is f32)",
    )
    args = p.parse_args()

    text = sys.stdin.read() if args.spec == "-" else open(args.spec).read()
    specs = {m["name"]: m for m in json.loads(text)}
    if args.model not in specs:
        raise SystemExit(f"unknown model {args.model!r}; the spec has {sorted(specs)}")
    spec = specs[args.model]
    classes = args.classes or (1000 if args.model == "all-cnn-imagenet" else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        # PyTorch's fastest: cuDNN's algorithm search for the fixed shapes.
        torch.backends.cudnn.benchmark = True
    model = AllCnnRef(spec, classes).to(device)
    side = spec["input_size"]
    n = args.batch * 3 * side * side
    # The same fixed input as `allcnn bench`: sin(0.01 * i).
    x = torch.sin(torch.arange(n, dtype=torch.float32) * 0.01).reshape(args.batch, 3, side, side).to(device)
    labels = (torch.arange(args.batch) % classes).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    train = args.mode == "train"
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3) if train else None
    model.train(train)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        if train:
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x), labels)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast():
                model(x)

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    secs = sum(times)
    print(
        json.dumps(
            {
                "model": args.model,
                "mode": args.mode,
                "conv": "pytorch"
                + ("-bf16" if args.bf16 else "")
                + ("-tf32" if args.tf32 and device.type == "cuda" else "")
                + ("-nhwc" if args.channels_last else ""),
                "batch": args.batch,
                "iters": args.iters,
                "warmup": args.warmup,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "images_per_sec": args.batch * args.iters / secs,
                "ms_per_batch": secs * 1000 / args.iters,
                "median_ms_per_batch": statistics.median(times) * 1000,
                "peak_rss_mib": peak_rss_mib(),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
