//! Renders the method-comparison and top-activation figures for a weights
//! file and a safetensors file holding `input` [N,3,H,W] (and optionally
//! `labels` [N]):
//!
//! ```text
//! cargo run --release -p allcnn-viz --example figures -- \
//!     WEIGHTS.safetensors INPUT.safetensors OUT_DIR [LAYER [MODEL]]
//! ```
//!
//! MODEL (a registry name, 10 classes) is needed only for a weights file
//! that does not describe its architecture (e.g. the golden fixtures).
//!
//! Writes `OUT_DIR/comparison.png` (each image beside its gradient,
//! deconvnet and guided-backprop maps for the predicted class),
//! `OUT_DIR/saliency-*.png` and `OUT_DIR/top-LAYER.png`.

use std::path::PathBuf;

use allcnn_models::{ArchSpec, LayerName, WeightsFile};
use allcnn_viz::render::{self, RenderOptions, Style};
use allcnn_viz::{attribute_all, Method, Saliency, TargetSpec, TopActivations};
use candle_core::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, input, out, rest @ ..] = args.as_slice() else {
        return Err("usage: figures WEIGHTS INPUT OUT_DIR [LAYER [MODEL]]".into());
    };
    let layer: LayerName = rest.first().map_or("conv6", |s| s.as_str()).parse()?;
    let dev = Device::Cpu;
    let model = match rest.get(1) {
        Some(name) => WeightsFile::load_as(weights, ArchSpec::by_name(name, 10)?, &dev)?.model,
        None => WeightsFile::load(weights, &dev)?.model,
    };
    let tensors = candle_core::safetensors::load(input, &dev)?;
    let x = tensors.get("input").ok_or("no `input` tensor")?;
    let out = PathBuf::from(out);
    let opts = RenderOptions {
        scale: 4,
        ..Default::default()
    };

    let target = "predicted"
        .parse::<TargetSpec>()?
        .resolve(&model, x, None)?;
    let methods = [Method::Gradient, Method::Deconvnet, Method::GuidedBackprop];
    let maps = attribute_all(&model, &methods, x, &target)?;
    render::write_png(
        &render::comparison_grid(x, &maps, &opts)?,
        out.join("comparison.png"),
    )?;
    let sal = Saliency::new(&model).attribute(x, &target)?;
    let names: Vec<String> = (0..sal.dim(0)?).map(|i| format!("saliency-{i}")).collect();
    render::write_maps(&sal, Style::Heat, &opts, &out, &names)?;

    let channels = model.spec().map_sizes(model.spec().input_size)?;
    let c = channels
        .iter()
        .find(|(n, _)| *n == layer)
        .map(|(_, s)| s.0)
        .ok_or("no such layer")?;
    let mut top = TopActivations::new(&model, layer, (0..c.min(8)).collect(), 4)?;
    for start in (0..x.dim(0)?).step_by(16) {
        let n = 16.min(x.dim(0)? - start);
        top.push(&x.narrow(0, start, n)?)?;
    }
    let fig = top.reconstruct(&[Method::GuidedBackprop, Method::Deconvnet])?;
    render::write_png(
        &render::top_activation_grid(&fig, &opts)?,
        out.join(format!("top-{layer}.png")),
    )?;
    println!("wrote figures to {}", out.display());
    Ok(())
}
