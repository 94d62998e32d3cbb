#!/usr/bin/env python3
"""Set an allcnn run beside a Caffe training log, epoch by epoch.

The public All-CNN-C logs are Caffe's: `caffe/tools/extra/parse_log.py`
turns a log into `LOG.test` and `LOG.train` tables (NumIters, Seconds,
LearningRate, accuracy, loss). This script reads a run's `metrics.jsonl`
(one `"type":"epoch"` record per epoch) and such tables, converts Caffe's
iterations to epochs (iterations x batch / training images), and prints, at
the epochs asked for, the run's test accuracy (its test subset, or all test
images) and training loss beside the log's nearest test and the mean of its
training records over that epoch.

    python3 bench/compare_caffe_log.py RUN/metrics.jsonl ALL_CNN_C.log.test \
        --train ALL_CNN_C.log.train --batch 256 --epochs 1,5,10,30,100,200

Standard library only. Prints a Markdown table.
"""
import argparse
import csv
import json
import sys


def read_run(path):
    """Epoch (1-based) -> (test accuracy or None, training loss)."""
    out = {}
    with open(path) as f:
        for line in f:
            if '"type":"epoch"' not in line.replace(" ", ""):
                continue
            d = json.loads(line)
            out[d["epoch"] + 1] = (d.get("test_accuracy"), d.get("train_loss"))
    return out


def read_table(path):
    with open(path, newline="") as f:
        return [
            {k.strip(): float(v) for k, v in row.items() if v not in (None, "")}
            for row in csv.DictReader(f)
        ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", help="the run's metrics.jsonl")
    p.add_argument("test_log", help="Caffe's parsed LOG.test table")
    p.add_argument("--train", help="Caffe's parsed LOG.train table")
    p.add_argument("--batch", type=int, default=256, help="the Caffe run's batch size")
    p.add_argument("--images", type=int, default=50000, help="training images per epoch")
    p.add_argument("--epochs", default="1,2,3,5,10,20,30,50,100,150,200,225,250,300,350")
    a = p.parse_args(argv)
    run = read_run(a.metrics)
    if not run:
        sys.exit(f"{a.metrics}: no epoch records")
    test = read_table(a.test_log)
    train = read_table(a.train) if a.train else []
    per_epoch = a.images / a.batch
    print("| epoch | run test top-1 | log test top-1 | run train loss | log train loss |")
    print("|---|---|---|---|---|")
    for e in (int(x) for x in a.epochs.split(",")):
        it = e * per_epoch
        near = min(test, key=lambda r: abs(r["NumIters"] - it)) if test else None
        window = [r["loss"] for r in train if it - per_epoch < r["NumIters"] <= it]
        ours = run.get(e)
        cells = [
            str(e),
            f"{100 * ours[0]:.2f}" if ours and ours[0] is not None else "-",
            f"{100 * near['accuracy']:.2f} (iter {int(near['NumIters'])})" if near else "-",
            f"{ours[1]:.3f}" if ours and ours[1] is not None else "-",
            f"{sum(window) / len(window):.3f}" if window else "-",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
