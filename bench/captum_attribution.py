#!/usr/bin/env python3
"""Captum reference maps for the attribution methods beyond the paper.

Makes `allcnn-viz/tests/fixtures/captum-methods.safetensors`, which
`allcnn-viz/tests/captum.rs` compares against: InputXGradient, Grad-CAM (LayerGradCam, with
and without `relu_attributions`), Guided Grad-CAM, Integrated Gradients
(Gauss-Legendre and the four Riemann rules, zero and constant baselines;
only configurations that pass the golden README's jitter rule, see IG_CASES) and
Occlusion (whole and edge-cropped windows), LayerGradientXActivation,
LayerIntegratedGradients, LayerDeepLift, InternalInfluence and
LayerConductance (conv7, conv8),
and, in a second file (`captum-layer-methods.safetensors`, the
`--out-layer` path), LayerLRP, LayerDeepLiftShap, LayerGradientShap and
GradientShap (with the NumPy draws Captum made, stored for replay),
LayerFeatureAblation (per unit, and with stored layer masks) and
NeuronConductance,
DeepLift (zero and constant
baselines), DeepLiftShap (three stored noise baselines), FeatureAblation and
ShapleyValues (stored feature masks) and LRP (epsilon, gamma, alpha1-beta0
and a composite of them), each for the labels of the golden images, in
float64, stored as float32. The noise baselines and the masks are stored
beside the maps (`deep_lift_shap.baselines`, `mask.*`).

DeepLift and LRP also run on the golden model-c (`model_c.*`), for their
max-pool rules. The networks and their inputs are the golden fixtures of
../shared/golden (its weights and the two CIFAR-10 test images): only the
expected maps are written here, so the fixture stays small. As in the golden
README, everything is computed in float64 from the float32 weights and inputs,
and the script reports how far PyTorch's own float32 run lands from those
values (the tests' tolerance must sit above it).

    allcnn models --json > models.json
    python3 bench/captum_attribution.py --spec models.json \
        --golden ../shared/golden/all-cnn-c --golden-pool ../shared/golden/model-c \
        --out allcnn-viz/tests/fixtures/captum-methods.safetensors \
        --out-layer allcnn-viz/tests/fixtures/captum-layer-methods.safetensors

Needs torch, captum (0.9), numpy and safetensors.
"""

import argparse
import json

import captum
import numpy as np
import torch
import torch.nn as nn
from captum.attr import (
    LRP,
    GradientShap,
    LayerDeepLiftShap,
    LayerFeatureAblation,
    LayerGradientShap,
    LayerLRP,
    NeuronConductance,
    DeepLift,
    InternalInfluence,
    LayerConductance,
    LayerDeepLift,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    DeepLiftShap,
    FeatureAblation,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    Occlusion,
    ShapleyValues,
)
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule
from safetensors.torch import load_file, save_file


class Net(nn.Module):
    """The spec's layers with one `nn.ReLU` module per conv (Captum's layer
    and ReLU hooks need modules), logits = mean over the final map."""

    def __init__(self, spec, classes, pool_module=False):
        super().__init__()
        # LRP needs the global average as a module (Captum gives it the
        # epsilon rule); every other method sees the same function.
        self.pool = nn.AdaptiveAvgPool2d(1) if pool_module else None
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
        if self.pool is not None:
            return self.pool(self.body(x)).flatten(1)
        return self.body(x).mean(dim=(2, 3))


def build(spec, weights, dtype, pool_module=False):
    net = Net(spec, 10, pool_module)
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


def feature_masks():
    """The feature masks of the perturbation methods, `[1, 1, 32, 32]` ids."""
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    patches4 = (y // 4) * 8 + x // 4
    patches8 = (y // 8) * 4 + x // 8
    # Four irregular features: the centre square, then the rest split into
    # the left half, the top right and the bottom right.
    centre = (y >= 8) & (y < 24) & (x >= 8) & (x < 24)
    four = torch.where(centre, 0, torch.where(x < 16, 1, torch.where(y < 16, 2, 3)))
    return {
        "patches4": patches4[None, None],
        "patches8": patches8[None, None],
        "four": four[None, None],
    }


# LRP cases: the rule of every convolution (1..9); pooling keeps Captum's
# default epsilon rule (1e-9). The gamma and alpha1-beta0 rules divide by a
# sum of reweighted terms that can land near zero: on the first convolution
# (signed whitened pixels) they fail the jitter rule, so the cases leave it
# at LRP-0, as allcnn's `composite` does.
def lrp0():
    return EpsilonRule()


LRP_CASES = {
    "epsilon": lambda i: lrp0(),
    "epsilon0.25": lambda i: EpsilonRule(0.25),
    "gamma0.25.from2": lambda i: GammaRule(0.25) if i >= 2 else lrp0(),
    "gamma0.5.zero_bias.from4": lambda i: GammaRule(0.5, set_bias_to_zero=True) if i >= 4 else lrp0(),
    "alpha1beta0.from7": lambda i: Alpha1_Beta0_Rule() if i >= 7 else lrp0(),
    # allcnn's `composite` on nine convolutions: LRP-0 on conv1, gamma 0.25
    # on conv2-3, epsilon 0.25 on conv4-6, LRP-0 on conv7-9.
    "composite": lambda i: GammaRule(0.25) if 2 <= i <= 3 else (EpsilonRule(0.25) if 4 <= i <= 6 else lrp0()),
}


def deep_lift_shap_baselines():
    g = torch.Generator().manual_seed(5)
    return (0.5 * torch.randn((3, 3, 32, 32), generator=g, dtype=torch.float64)).float()


# GradientShap's draws (Captum takes them from NumPy's global generator:
# `np.random.choice` for the baselines, then `np.random.uniform` for the
# points); the same seed before every run gives every run the same draws,
# and the draws are stored so that allcnn can replay them. Most seeds put a
# point of the input-space GradientShap within rounding of a ReLU's kink
# (the jitter rule below fails); these two pass.
LAYER_SHAP_SEED = 11
SHAP_SEED = 18
SHAP_SAMPLES = 3


def with_draws(fn, seed):
    """`fn()` with NumPy seeded by `seed`, and the draws it made:
    (result, baseline indices, points), both image-major."""
    np.random.seed(seed)
    rec = {"choice": [], "uniform": []}
    choice, uniform = np.random.choice, np.random.uniform

    def recording_choice(*a, **k):
        r = choice(*a, **k)
        rec["choice"].append(np.asarray(r))
        return r

    def recording_uniform(*a, **k):
        r = uniform(*a, **k)
        rec["uniform"].append(np.asarray(r))
        return r

    np.random.choice, np.random.uniform = recording_choice, recording_uniform
    try:
        out = fn()
    finally:
        np.random.choice, np.random.uniform = choice, uniform
    assert len(rec["choice"]) == 1 and len(rec["uniform"]) == 1, rec
    return out, rec["choice"][0], rec["uniform"][0]


def layer_feature_masks():
    """LayerFeatureAblation's masks over conv8 `[1, 1, 6, 6]` (each position
    over all channels) and conv7 `[1, 192, 6, 6]` (groups of 16 channels)."""
    positions = torch.arange(36).reshape(1, 1, 6, 6)
    channels = (torch.arange(192) // 16).reshape(1, 192, 1, 1).expand(1, 192, 6, 6)
    return {"conv8.positions": positions, "conv7.channels16": channels.contiguous()}


# The methods of the second fixture (captum-layer-methods.safetensors).
SECOND = ("layer_lrp.", "layer_deep_lift_shap.", "layer_gradient_shap.",
          "layer_feature_ablation.", "gradient_shap.", "neuron_conductance.")


def compute(make_net, x, labels):
    """Every reference map, keyed as in the fixture."""
    net = make_net()
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
    # Layer maps are large: conv7/conv8 only (6x6), and LayerActivation is
    # checked against the golden act.conv7 / act.conv9 instead.
    out["layer_gradient_x_activation.conv8"] = LayerGradientXActivation(
        net, net.relus["conv8"]
    ).attribute(x, target=labels)
    out["layer_integrated_gradients.conv7.gausslegendre.4.0.0"] = LayerIntegratedGradients(
        net, net.relus["conv7"]
    ).attribute(x, baselines=0.0, target=labels, n_steps=4, method="gausslegendre")
    out["layer_integrated_gradients.conv8.riemann_trapezoid.5.0.25"] = LayerIntegratedGradients(
        net, net.relus["conv8"]
    ).attribute(x, baselines=0.25, target=labels, n_steps=5, method="riemann_trapezoid")
    # InternalInfluence and LayerConductance: the first 32 channels only,
    # to keep the fixture under 1 MiB (the tests compare the same slice).
    out["internal_influence.conv7.gausslegendre.4.0.0"] = InternalInfluence(
        net, net.relus["conv7"]
    ).attribute(x, baselines=0.0, target=labels, n_steps=4, method="gausslegendre")[:, :32].contiguous()
    out["layer_conductance.conv8.riemann_trapezoid.5.0.25"] = LayerConductance(
        net, net.relus["conv8"]
    ).attribute(x, baselines=0.25, target=labels, n_steps=5, method="riemann_trapezoid")[:, :32].contiguous()
    out["layer_conductance.conv7.gausslegendre.4.0.0"] = LayerConductance(
        net, net.relus["conv7"]
    ).attribute(x, baselines=0.0, target=labels, n_steps=4, method="gausslegendre")[:, :32].contiguous()
    out["layer_deep_lift.conv7.zero"] = LayerDeepLift(net, net.relus["conv7"]).attribute(
        x, baselines=0.0, target=labels
    )
    out["layer_deep_lift.conv8.const-0.25"] = LayerDeepLift(net, net.relus["conv8"]).attribute(
        x, baselines=-0.25, target=labels
    )
    dl = DeepLift(net)
    out["deep_lift.zero"] = dl.attribute(x, baselines=0.0, target=labels)
    out["deep_lift.const-0.25"] = dl.attribute(x, baselines=-0.25, target=labels)
    out["deep_lift_shap"] = DeepLiftShap(net).attribute(
        x, baselines=deep_lift_shap_baselines().to(x.dtype), target=labels
    )
    masks = feature_masks()
    fa = FeatureAblation(net)
    out["feature_ablation.patches4.zero"] = fa.attribute(
        x, target=labels, feature_mask=masks["patches4"], perturbations_per_eval=16
    )
    out["feature_ablation.patches8.const0.25"] = fa.attribute(
        x, baselines=0.25, target=labels, feature_mask=masks["patches8"]
    )
    out["shapley_values.four.zero"] = ShapleyValues(net).attribute(
        x, target=labels, feature_mask=masks["four"]
    )
    for name, rule in LRP_CASES.items():
        lnet = make_net(pool_module=True)
        for i, conv in enumerate([m for m in lnet.body if isinstance(m, nn.Conv2d)], 1):
            conv.rule = rule(i)
        out[f"lrp.{name}"] = LRP(lnet).attribute(x, target=labels)
    # The layer methods of the second fixture. LayerLRP on a convolution
    # (Captum keeps relevance on rule layers only): its output's relevance,
    # which its ReLU passes on unchanged.
    for name, layer in (("epsilon", 7), ("composite", 8), ("composite", 3)):
        lnet = make_net(pool_module=True)
        convs = [m for m in lnet.body if isinstance(m, nn.Conv2d)]
        for i, conv in enumerate(convs, 1):
            conv.rule = LRP_CASES[name](i)
        r = LayerLRP(lnet, convs[layer - 1]).attribute(x, target=labels)
        # conv3's map is large: the first 16 channels (the test slices too).
        out[f"layer_lrp.conv{layer}.{name}"] = r[:, :16].contiguous() if layer == 3 else r
    bases = deep_lift_shap_baselines().to(x.dtype)
    out["layer_deep_lift_shap.conv8"] = LayerDeepLiftShap(net, net.relus["conv8"]).attribute(
        x, baselines=bases, target=labels
    )
    out["layer_deep_lift_shap.conv6"] = LayerDeepLiftShap(net, net.relus["conv6"]).attribute(
        x, baselines=bases, target=labels
    )[:, :16].contiguous()
    lgs, idx, alpha = with_draws(
        lambda: LayerGradientShap(net, net.relus["conv7"]).attribute(
            x, baselines=bases, n_samples=SHAP_SAMPLES, target=labels
        ),
        LAYER_SHAP_SEED,
    )
    out["layer_gradient_shap.conv7"] = lgs
    out["layer_gradient_shap.conv7.baseline_index"] = torch.tensor(idx, dtype=x.dtype)
    out["layer_gradient_shap.conv7.alpha"] = torch.tensor(alpha, dtype=x.dtype)
    gs, idx, alpha = with_draws(
        lambda: GradientShap(net).attribute(
            x, baselines=bases, n_samples=SHAP_SAMPLES, target=labels
        ),
        SHAP_SEED,
    )
    out["gradient_shap.input"] = gs
    out["gradient_shap.input.baseline_index"] = torch.tensor(idx, dtype=x.dtype)
    out["gradient_shap.input.alpha"] = torch.tensor(alpha, dtype=x.dtype)
    lfa = {
        "layer_feature_ablation.conv9.units": LayerFeatureAblation(net, net.relus["conv9"]).attribute(
            x, target=labels
        ),
    }
    masks = layer_feature_masks()
    lfa["layer_feature_ablation.conv8.positions.const0.25"] = LayerFeatureAblation(
        net, net.relus["conv8"]
    ).attribute(x, layer_baselines=0.25, target=labels, layer_mask=masks["conv8.positions"])
    lfa["layer_feature_ablation.conv7.channels16.zero"] = LayerFeatureAblation(
        net, net.relus["conv7"]
    ).attribute(x, target=labels, layer_mask=masks["conv7.channels16"])
    out.update(lfa)
    # NeuronConductance: through one unit of conv7 (default rule, constant
    # baseline) and of conv5 (Gauss-Legendre, zero baseline).
    out["neuron_conductance.conv7.159.4.4.riemann_trapezoid.5.0.25"] = NeuronConductance(
        net, net.relus["conv7"]
    ).attribute(x, neuron_selector=(159, 4, 4), baselines=0.25, target=labels, n_steps=5)
    out["neuron_conductance.conv5.70.8.10.gausslegendre.4.0.0"] = NeuronConductance(
        net, net.relus["conv5"]
    ).attribute(
        x, neuron_selector=(70, 8, 10), target=labels, n_steps=4, method="gausslegendre"
    )
    return out


def compute_pool(make_net, x, labels):
    """DeepLift's and LRP's max-pool rules on the golden model-c."""
    net = make_net()
    out = {
        "model_c.deep_lift.const0.5": DeepLift(net).attribute(x, baselines=0.5, target=labels),
        "model_c.deep_lift.const-0.25": DeepLift(net).attribute(x, baselines=-0.25, target=labels),
    }
    for name in ("epsilon", "epsilon0.25"):
        lnet = make_net(pool_module=True)
        for i, conv in enumerate([m for m in lnet.body if isinstance(m, nn.Conv2d)], 1):
            conv.rule = LRP_CASES[name](i)
        out[f"model_c.lrp.{name}"] = LRP(lnet).attribute(x, target=labels)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", required=True, help="`allcnn models --json` output")
    ap.add_argument("--golden", required=True, help="../shared/golden/all-cnn-c")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--out-layer",
        required=True,
        help="the second fixture (layer LRP, DeepLiftShap, GradientShap, feature ablation)",
    )
    ap.add_argument(
        "--golden-pool",
        help="../shared/golden/model-c: DeepLift's and LRP's max-pool rules on a pooling network",
    )
    a = ap.parse_args()
    specs = json.load(open(a.spec))
    spec = next(s for s in specs if s["name"] == "all-cnn-c")
    weights = load_file(f"{a.golden}/weights.safetensors")
    expected = load_file(f"{a.golden}/expected.safetensors")
    x32 = expected["input"]
    labels = expected["labels"].long()

    def maker(w, dtype):
        return lambda pool_module=False: build(spec, w, dtype, pool_module)

    ref = compute(maker(weights, torch.float64), x32.double(), labels)
    f32 = compute(maker(weights, torch.float32), x32, labels)
    jitters = [
        compute(maker(jittered(weights, s), torch.float64), x32.double(), labels)
        for s in range(3)
    ]
    if a.golden_pool:
        pspec = next(s for s in specs if s["name"] == "model-c")
        pw = load_file(f"{a.golden_pool}/weights.safetensors")
        pe = load_file(f"{a.golden_pool}/expected.safetensors")
        px, plabels = pe["input"], pe["labels"].long()

        def pool_maker(w, dtype):
            return lambda pool_module=False: build(pspec, w, dtype, pool_module)

        ref.update(compute_pool(pool_maker(pw, torch.float64), px.double(), plabels))
        f32.update(compute_pool(pool_maker(pw, torch.float32), px, plabels))
        for s, j in enumerate(jitters):
            j.update(compute_pool(pool_maker(jittered(pw, s), torch.float64), px.double(), plabels))
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
    tensors = {k: v.float().contiguous() for k, v in ref.items() if not k.startswith(SECOND)}
    second = {k: v.float().contiguous() for k, v in ref.items() if k.startswith(SECOND)}
    # The inputs of the methods that take more than a constant.
    tensors["deep_lift_shap.baselines"] = deep_lift_shap_baselines()
    for name, mask in feature_masks().items():
        tensors[f"mask.{name}"] = mask.to(torch.int64)
    for name, mask in layer_feature_masks().items():
        second[f"layer_mask.{name}"] = mask.to(torch.int64)
    save_file(tensors, a.out, metadata=meta)
    save_file(second, a.out_layer, metadata=meta)
    print(f"wrote {len(tensors)} tensors to {a.out} and {len(second)} to {a.out_layer}; "
          f"float32 worst rel err {worst:.3g}")


if __name__ == "__main__":
    main()
