#!/usr/bin/env python3
"""Captum reference maps for the attribution methods beyond the paper.

Makes `allcnn-viz/tests/fixtures/captum-methods.safetensors`, which
`allcnn-viz/tests/captum.rs` compares against: InputXGradient, Grad-CAM (LayerGradCam, with
and without `relu_attributions`), Guided Grad-CAM, Integrated Gradients
(Gauss-Legendre and the four Riemann rules, zero and constant baselines;
only configurations that pass the golden README's jitter rule, see IG_CASES) and
Occlusion (whole and edge-cropped windows), each for the labels of the golden
images, in float64, stored as float32.

The network and its inputs are the golden all-cnn-c fixture of
../shared/golden (its weights and the two CIFAR-10 test images): only the
expected maps are written here, so the fixture stays small. As in the golden
README, everything is computed in float64 from the float32 weights and inputs,
and the script reports how far PyTorch's own float32 run lands from those
values (the tests' tolerance must sit above it).

    allcnn models --json > models.json
    python3 bench/captum_attribution.py --spec models.json \
        --golden ../shared/golden/all-cnn-c \
        --out allcnn-viz/tests/fixtures/captum-methods.safetensors

Needs torch, captum (0.9), numpy and safetensors.
"""

import argparse
import json

import captum
import torch
import torch.nn as nn
from captum.attr import (
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    Occlusion,
)
from safetensors.torch import load_file, save_file


class Net(nn.Module):
    """The spec's layers with one `nn.ReLU` module per conv (Captum's layer
    and ReLU hooks need modules), logits = mean over the final map."""

    def __init__(self, spec, classes):
        super().__init__()
        self.body = nn.Sequential()
        convs = [l for l in spec["layers"] if l["type"] == "conv"]
        channels, seen = 3, 0
        self.relus = {}
        for layer in spec["layers"]:
            if layer["type"] == "conv":
                seen += 1
                out = classes if seen == len(convs) else layer["out"]
                self.body.add_module(
                    f"conv{seen}",
                    nn.Conv2d(
                        channels,
                        out,
                        layer["kernel"],
                        stride=layer["stride"],
                        padding=layer["padding"],
                    ),
                )
                relu = nn.ReLU()
                self.body.add_module(f"relu{seen}", relu)
                self.relus[f"conv{seen}"] = relu
                channels = out
            elif layer["type"] == "max_pool":
                self.body.add_module(f"pool{seen}", nn.MaxPool2d(3, 2, padding=1))
            # dropout: eval mode, nothing to do

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


def build(spec, weights, dtype):
    net = Net(spec, 10)
    state = {}
    for name, t in weights.items():
        # conv{i}.weight -> body.conv{i}.weight
        state[f"body.{name}"] = t.to(dtype)
    net.load_state_dict(state)
    return net.to(dtype).eval()


# (rule, steps, constant baseline). IG evaluates the network at new points
# of the input space, where a ReLU may sit within rounding of zero: most
# configurations flip a unit under a 1e-6 weight jitter (the golden README's
# rule (b)) and then differ by ~1e-3 between correct float32 implementations.
# These pass rule (b) on the golden all-cnn-c images (checked below).
IG_CASES = [
    ("gausslegendre", 4, 0.0),
    ("gausslegendre", 6, 0.25),
    ("riemann_trapezoid", 5, 0.25),
    ("riemann_left", 4, 0.25),
    ("riemann_right", 4, 0.25),
    ("riemann_middle", 6, -0.25),
]


def jittered(weights, seed):
    """Every weight times (1 + 1e-6 N(0, 1)), rounded to float32."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v.double() * (1 + 1e-6 * torch.randn(v.shape, generator=g, dtype=torch.float64))).float()
        for k, v in weights.items()
    }


def compute(net, x, labels):
    """Every reference map, keyed as in the fixture."""
    out = {}
    for layer, relu_attr in (("conv8", False), ("conv7", True), ("conv6", False)):
        cam = LayerGradCam(net, net.relus[layer]).attribute(
            x, target=labels, relu_attributions=relu_attr
        )
        key = f"grad_cam.{layer}" + (".relu" if relu_attr else "")
        out[key] = cam
    out["guided_grad_cam.conv8"] = GuidedGradCam(net, net.relus["conv8"]).attribute(
        x, target=labels
    )
    out["guided_grad_cam.conv6"] = GuidedGradCam(net, net.relus["conv6"]).attribute(
        x, target=labels
    )
    out["input_x_gradient"] = InputXGradient(net).attribute(x, target=labels)
    ig = IntegratedGradients(net)
    for rule, steps, base in IG_CASES:
        key = f"integrated_gradients.{rule}.{steps}.{base}"
        out[key] = ig.attribute(
            x, baselines=base, target=labels, n_steps=steps, method=rule
        )
    occ = Occlusion(net)
    out["occlusion.8x8.4.zero"] = occ.attribute(
        x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=labels
    )
    out["occlusion.6x5.4x3.const0.25"] = occ.attribute(
        x,
        sliding_window_shapes=(3, 6, 5),
        strides=(3, 4, 3),
        baselines=0.25,
        target=labels,
    )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", required=True, help="`allcnn models --json` output")
    ap.add_argument("--golden", required=True, help="../shared/golden/all-cnn-c")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    specs = json.load(open(a.spec))
    spec = next(s for s in specs if s["name"] == "all-cnn-c")
    weights = load_file(f"{a.golden}/weights.safetensors")
    expected = load_file(f"{a.golden}/expected.safetensors")
    x32 = expected["input"]
    labels = expected["labels"].long()

    ref = compute(build(spec, weights, torch.float64), x32.double(), labels)
    f32 = compute(build(spec, weights, torch.float32), x32, labels)
    jitters = [
        compute(build(spec, jittered(weights, s), torch.float64), x32.double(), labels)
        for s in range(3)
    ]
    worst, worst_jitter = 0.0, 0.0
    for k, v in ref.items():
        scale = max(v.abs().max().item(), 1e-30)
        err = (f32[k].double() - v).abs().max().item() / scale
        jit = max((j[k] - v).abs().max().item() / scale for j in jitters)
        worst, worst_jitter = max(worst, err), max(worst_jitter, jit)
        print(
            f"{k:48s} {tuple(v.shape)} max|v| {scale:.4g} "
            f"float32 rel err {err:.2e}, 1e-6 weight jitter {jit:.2e}"
        )
    # A flipped unit moves a map by ~1e-3; the smooth effect of the jitter
    # itself stays near 1e-5.
    if worst_jitter > 1e-4:
        raise SystemExit(f"a map moves by {worst_jitter:.2e} under a 1e-6 weight jitter: pick other cases")
    meta = {
        "captum": captum.__version__,
        "torch": torch.__version__,
        "golden": "all-cnn-c",
        "labels": json.dumps(labels.tolist()),
        "float32_worst_rel_err": f"{worst:.3g}",
        "jitter_worst_rel_err": f"{worst_jitter:.3g}",
    }
    save_file({k: v.float().contiguous() for k, v in ref.items()}, a.out, metadata=meta)
    print(f"wrote {len(ref)} tensors to {a.out}; float32 worst rel err {worst:.3g}")


if __name__ == "__main__":
    main()
