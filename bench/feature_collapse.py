#!/usr/bin/env python3
"""How much of All-CNN-C's features depend on the input, layer by layer.

For 400 training images (40 per class, a seeded sample) preprocessed as a
run does (GCN with scale 55, then the run's ZCA from its
preprocessing.safetensors), this prints per layer the share of the
activations' energy that is their common mean over every image and
position ("common") and the share that varies between images' spatial
means ("between"), and per class map the fraction of (image, position)
pairs where its pre-activation is positive. For the weights of a
checkpoint, and for fresh LeCun-uniform and He-normal initialisations
(biases 0). A class map that is off for every input gets no gradient and
stays dead (docs/training.md, "The fragile start").

    python3 bench/feature_collapse.py DATA/train RUN/preprocessing.safetensors [RUN/checkpoint.safetensors]

Needs numpy, torch, Pillow and safetensors.
"""
import glob
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import load_file

LAYERS = [(3, 96, 3, 1, 1), (96, 96, 3, 1, 1), (96, 96, 3, 2, 1), (96, 192, 3, 1, 1),
          (192, 192, 3, 1, 1), (192, 192, 3, 2, 1), (192, 192, 3, 1, 0), (192, 192, 1, 1, 0),
          (192, 10, 1, 1, 0)]


def inputs(train_dir, preprocessing):
    rng = np.random.default_rng(0)
    files = []
    for c in sorted(glob.glob(train_dir + '/*')):
        fs = sorted(glob.glob(c + '/*'))
        files += [fs[i] for i in rng.choice(len(fs), 40, replace=False)]
    x = np.stack([np.asarray(Image.open(f).convert('RGB'), dtype=np.float64)
                  .transpose(2, 0, 1).reshape(-1) for f in files])
    x = x - x.mean(1, keepdims=True)
    x = x / (np.sqrt((x ** 2).sum(1, keepdims=True)) / 55.0)
    pre = load_file(preprocessing)
    x = (x - pre['preprocess.zca.mean']) @ pre['preprocess.zca.whitening'].astype(np.float64)
    print('whitened input: mean per-pixel variance %.4f' % x.var(0).mean())
    return torch.tensor(x, dtype=torch.float32).reshape(-1, 3, 32, 32)


def report(x, params, tag):
    h, shares = x, []
    for i, (_, _, _, stride, pad) in enumerate(LAYERS, 1):
        z = F.conv2d(h, params[f'conv{i}.weight'], params[f'conv{i}.bias'], stride=stride, padding=pad)
        h = F.relu(z)
        f = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]).double()
        energy = (f * f).sum(1).mean()
        mu = f.mean(0)
        per_image = h.mean((2, 3)).double()
        between = ((per_image - per_image.mean(0)) ** 2).sum(1).mean()
        shares.append('conv%d %.2f/%.3f' % (i, mu @ mu / energy, between / energy))
    on = (z > 0).float().mean((0, 2, 3))
    print(f'{tag}: common/between share:', ' '.join(shares))
    print(f'{tag}: class maps on:', ' '.join('%.2f' % v for v in on.tolist()))


def fresh(kind, seed=0):
    torch.manual_seed(seed)
    params = {}
    for i, (cin, cout, k, _, _) in enumerate(LAYERS, 1):
        fan_in = cin * k * k
        if kind == 'lecun-uniform':
            w = (torch.rand(cout, cin, k, k) * 2 - 1) * (3 / fan_in) ** 0.5
        else:
            w = torch.randn(cout, cin, k, k) * (2 / fan_in) ** 0.5
        params[f'conv{i}.weight'], params[f'conv{i}.bias'] = w, torch.zeros(cout)
    return params


def main():
    torch.set_num_threads(1)
    x = inputs(sys.argv[1], sys.argv[2])
    if len(sys.argv) > 3:
        d = load_file(sys.argv[3])
        report(x, {k[len('param.'):]: torch.tensor(v) for k, v in d.items() if k.startswith('param.')},
               'checkpoint')
    for kind in ['lecun-uniform', 'he-normal']:
        report(x, fresh(kind), kind)


if __name__ == '__main__':
    main()
