//! `allcnn viz` (attribution maps) and `allcnn viz top` (the top-activation figure).

use std::path::{Path, PathBuf};

use allcnn_data::{DataLoader, OpenOptions, Preprocessing};
use allcnn_models::LayerName;
use allcnn_viz::render::{self, RenderOptions, Style};
use allcnn_viz::{
    LrpComposite, Method, MethodOptions, NoiseAggregation, NoiseLevel, Quadrature, SmoothOptions,
    Target, TargetSpec, TopActivations,
};
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Subcommand;

use crate::out::OutKind;
use crate::predict::{image_paths, is_safetensors, load_images, load_tensor_file};
use crate::weights::{self, ModelArgs};
use allcnn_train::classify::top_guesses;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    top: Option<Sub>,
    #[command(flatten)]
    model: ModelArgs,
    /// The attribution method (its settings below).
    #[arg(long, required = true, value_parser = crate::values::method())]
    method: Option<Method>,
    /// Image files or folders (preprocessed as the weights record), or a
    /// .safetensors file with a preprocessed `input` [N,3,H,W] (and `labels`).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// class:K, labels, predicted, unit:LAYER:C:Y:X (e.g. unit:conv7:7:3:3) or strongest:LAYER:C.
    #[arg(long, default_value = "predicted", value_parser = clap::value_parser!(TargetSpec))]
    target: TargetSpec,
    /// `*.safetensors` for the raw maps (tensor `attribution`), or a folder
    /// for one PNG per image plus `comparison.png`.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Methods of `comparison.png`, comma-separated (--method is added in
    /// front where the list lacks it).
    #[arg(long, value_delimiter = ',', value_parser = crate::values::method(),
          default_value = "gradient,deconvnet,guided-backprop")]
    compare: Vec<Method>,
    #[command(flatten)]
    settings: MethodArgs,
    /// Draw each image's map over the image (in grey) instead of alone.
    #[arg(long)]
    overlay: bool,
    /// With --overlay: opacity of the strongest attribution (0 to 1).
    #[arg(long, default_value_t = 0.7, value_parser = parse_alpha, requires = "overlay")]
    alpha: f32,
    /// With --overlay: which part of the map (all uses a blue-white-red scale).
    #[arg(long, default_value = "absolute", value_parser = crate::values::sign(), requires = "overlay")]
    sign: render::Sign,
    /// With --overlay: colour scale.
    #[arg(long, default_value = "heat", value_parser = crate::values::colormap(), requires = "overlay")]
    colormap: render::Colormap,
    #[command(flatten)]
    common: Common,
}

/// The settings of the methods beyond the paper.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Method settings")]
pub(crate) struct MethodArgs {
    /// grad-cam, guided-grad-cam: the convolution whose activations are
    /// weighted [default: the one before the class convolution, conv8 of
    /// All-CNN-C].
    #[arg(long, value_parser = clap::value_parser!(LayerName))]
    layer: Option<LayerName>,
    /// grad-cam: keep negative values (Captum's relu_attributions=False).
    #[arg(long)]
    no_relu: bool,
    /// integrated-gradients: points on the path from the baseline.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    steps: u32,
    /// integrated-gradients: the quadrature rule (Captum's names).
    #[arg(long, default_value = "gausslegendre", value_parser = crate::values::quadrature())]
    quadrature: Quadrature,
    /// integrated-gradients, occlusion, deep-lift, deep-lift-shap (the noise's
    /// mean), feature-ablation, shapley-*: the constant baseline (in the
    /// preprocessed input's units; 0 is the mean image after GCN + ZCA).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = parse_finite)]
    baseline: f32,
    /// occlusion: window size, `8` or `HxW` (e.g. `8x6`).
    #[arg(long, default_value = "8", value_parser = parse_pair)]
    window: (usize, usize),
    /// occlusion: stride, `4` or `YxX`.
    #[arg(long, default_value = "4", value_parser = parse_pair)]
    stride: (usize, usize),
    /// SmoothGrad: average the method's maps over this many noisy copies of
    /// each image (0: off; at most 100,000).
    #[arg(long, default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    smooth: usize,
    /// SmoothGrad: the noise's standard deviation as a fraction of each
    /// image's value range.
    #[arg(long, default_value_t = 0.15, requires = "smooth")]
    noise: f32,
    /// SmoothGrad: how the noisy maps are combined.
    #[arg(long, default_value = "smoothgrad", value_parser = crate::values::noise_aggregation(), requires = "smooth")]
    smooth_kind: NoiseAggregation,
    /// lrp: the rule of every convolution: composite[:E:G] (LRP-0 on conv1,
    /// gamma G on the rest of the lower third, epsilon E in the middle third,
    /// LRP-0 above; 0.25, 0.25), epsilon[:E] (default 1e-9: Captum's default,
    /// LRP-0, which equals input-x-gradient on these networks), gamma[:G]
    /// (0.25) or alpha1-beta0.
    #[arg(long, default_value = "composite", value_parser = clap::value_parser!(LrpComposite))]
    lrp: LrpComposite,
    /// feature-ablation, shapley-values, shapley-value-sampling: the patch
    /// of one feature, `4` or `HxW` [default: 16x16 for shapley-values
    /// (4 features, 16 passes per image), 4x4 otherwise].
    #[arg(long, value_parser = parse_pair)]
    patch: Option<(usize, usize)>,
    /// shapley-value-sampling: random feature orders (each costs
    /// features + 1 passes per image); gradient-shap: draws per image.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    samples: u32,
    /// deep-lift-shap, gradient-shap: how many Gaussian-noise baselines
    /// (mean --baseline, standard deviation 1).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    shap_baselines: u32,
    /// The seed of SmoothGrad's noise, shapley-value-sampling's orders,
    /// gradient-shap's draws and the SHAP methods' baselines.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl MethodArgs {
    pub(crate) fn options(&self) -> Result<MethodOptions> {
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            usage!("--noise {}: use a fraction >= 0, e.g. 0.15", self.noise);
        }
        Ok(MethodOptions {
            layer: self.layer,
            relu_attributions: !self.no_relu,
            steps: self.steps as usize,
            quadrature: self.quadrature,
            baseline: self.baseline,
            window: self.window,
            stride: self.stride,
            lrp: self.lrp,
            patch: self.patch,
            samples: self.samples as usize,
            shap_baselines: self.shap_baselines as usize,
            seed: self.seed,
            smooth: (self.smooth > 0).then_some(SmoothOptions {
                samples: self.smooth,
                noise: NoiseLevel::OfRange(self.noise),
                aggregation: self.smooth_kind,
                seed: self.seed,
            }),
            ..MethodOptions::default()
        })
    }

    /// A warning for each setting given (other than its default) that none
    /// of `methods` uses: `--steps` with gradient was ignored without a
    /// word.
    pub(crate) fn warn_unused(&self, methods: &[Method]) {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            settings: MethodArgs,
        }
        use clap::Parser;
        let d = Defaults::parse_from(["allcnn"]).settings;
        use Method as M;
        let baseline = &[
            M::IntegratedGradients,
            M::Occlusion,
            M::DeepLift,
            M::DeepLiftShap,
            M::GradientShap,
            M::FeatureAblation,
            M::ShapleyValues,
            M::ShapleyValueSampling,
            M::KernelShap,
            M::Lime,
        ][..];
        let patch = &[
            M::FeatureAblation,
            M::ShapleyValues,
            M::ShapleyValueSampling,
            M::KernelShap,
            M::Lime,
        ][..];
        let sampled = &[
            M::GradientShap,
            M::ShapleyValueSampling,
            M::KernelShap,
            M::Lime,
        ][..];
        let seeded = &[
            M::DeepLiftShap,
            M::GradientShap,
            M::ShapleyValueSampling,
            M::KernelShap,
            M::Lime,
        ][..];
        let checks: [(&str, bool, &[Method]); 12] = [
            (
                "--layer",
                self.layer != d.layer,
                &[M::GradCam, M::GuidedGradCam],
            ),
            ("--no-relu", self.no_relu != d.no_relu, &[M::GradCam]),
            ("--steps", self.steps != d.steps, &[M::IntegratedGradients]),
            (
                "--quadrature",
                self.quadrature != d.quadrature,
                &[M::IntegratedGradients],
            ),
            ("--baseline", self.baseline != d.baseline, baseline),
            ("--window", self.window != d.window, &[M::Occlusion]),
            ("--stride", self.stride != d.stride, &[M::Occlusion]),
            ("--lrp", self.lrp != d.lrp, &[M::Lrp]),
            ("--patch", self.patch != d.patch, patch),
            ("--samples", self.samples != d.samples, sampled),
            (
                "--shap-baselines",
                self.shap_baselines != d.shap_baselines,
                &[M::DeepLiftShap, M::GradientShap],
            ),
            // SmoothGrad's noise is seeded too, whatever the method.
            ("--seed", self.seed != d.seed && self.smooth == 0, seeded),
        ];
        for (flag, given, users) in checks {
            if given && !methods.iter().any(|m| users.contains(m)) {
                let users: Vec<String> = users.iter().map(ToString::to_string).collect();
                let ours: Vec<String> = methods.iter().map(ToString::to_string).collect();
                eprintln!(
                    "warning: {flag} applies to {} only: {} {} not use it",
                    users.join(", "),
                    ours.join(", "),
                    if ours.len() == 1 { "does" } else { "do" }
                );
            }
        }
    }

    /// How the maps of `method` are drawn: squared or variance SmoothGrad
    /// maps are non-negative.
    pub(crate) fn style(&self, method: Method) -> Style {
        if self.smooth > 0 && self.smooth_kind != NoiseAggregation::Mean {
            Style::Heat
        } else {
            Style::for_method(method)
        }
    }
}

fn parse_pair(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}`: use a positive size like 8 or 8x6");
    let one = |t: &str| {
        t.trim()
            .parse::<usize>()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(bad)
    };
    match s.split_once(['x', 'X']) {
        Some((a, b)) => Ok((one(a)?, one(b)?)),
        None => one(s).map(|v| (v, v)),
    }
}

#[derive(clap::Args, Clone)]
pub(crate) struct Common {
    /// Percentile of |value| at which maps saturate (above 0, at most 100).
    #[arg(long, default_value_t = 99.0, value_parser = parse_percentile)]
    pub(crate) percentile: f32,
    /// Integer upscaling of every picture (1 to 64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) scale: u32,
    #[command(flatten)]
    pub(crate) device: crate::device::DeviceArg,
    /// Print what was done (predictions, files written) as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--json` output of `viz` and `viz top`.
#[derive(serde::Serialize, Default)]
struct Written {
    /// `(input, predicted class, its name, probability)` per input image.
    predictions: Vec<Prediction>,
    /// Every file written.
    files: Vec<PathBuf>,
    /// Images scanned (`viz top`).
    #[serde(skip_serializing_if = "Option::is_none")]
    scanned: Option<usize>,
    /// The layer and channels drawn (`viz top`).
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<usize>>,
    /// What the maps explain (`--target`: `predicted`, `class:K`, ...),
    /// which need not be the predictions above.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

#[derive(serde::Serialize)]
struct Prediction {
    input: String,
    class: usize,
    name: Option<String>,
    probability: f32,
}

fn parse_finite(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err("must be a finite number".into()),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

fn parse_alpha(s: &str) -> Result<f32, String> {
    let a: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&a) {
        Ok(a)
    } else {
        Err(format!("{s} is not an opacity: use a number from 0 to 1"))
    }
}

fn parse_percentile(s: &str) -> Result<f32, String> {
    let p: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if p > 0.0 && p <= 100.0 {
        Ok(p)
    } else {
        Err(format!(
            "{s} is not a percentile: use a number above 0 and at most 100"
        ))
    }
}

#[derive(Subcommand)]
enum Sub {
    /// The paper's figure: the k inputs that activate each channel of a layer
    /// most, as receptive-field patches beside their guided-backprop and
    /// deconvnet reconstructions.
    #[command(
        after_help = "Example:\n  allcnn viz top --weights run/best.safetensors --data data/cifar-10-batches-bin --layer conv6 --channels 0..16 -k 9 --out conv6.png"
    )]
    Top(TopArgs),
    /// The trust report of each method: the sanity checks of Adebayo et al.
    /// (2018; maps of the trained network against maps after randomising
    /// its layers, cascading from the top and one at a time, and against a
    /// network trained on shuffled labels if given) and deletion/insertion
    /// faithfulness curves.
    #[command(
        visible_alias = "trust",
        after_help = "Example:\n  allcnn viz sanity --input docs/samples --out trust/\n  allcnn viz sanity --input docs/samples --methods gradient,guided-backprop,grad-cam --shuffled-labels shuffled.safetensors --out trust/"
    )]
    Sanity(crate::trust::Args),
}

#[derive(clap::Args)]
struct TopArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Data set to scan (CIFAR binary folder or image folder).
    #[arg(long)]
    data: PathBuf,
    /// Which split to scan.
    #[arg(long, value_enum, default_value_t = crate::values::SplitArg::Test)]
    split: crate::values::SplitArg,
    /// Scan a seeded random sample of N images (a data set sorted by class
    /// would otherwise show only its first classes).
    #[arg(long, value_parser = crate::values::count::<usize>)]
    limit: Option<usize>,
    /// Seed of the --limit sample.
    #[arg(long, default_value_t = 0, requires = "limit")]
    seed: u64,
    /// Layer, e.g. conv6.
    #[arg(long, value_parser = clap::value_parser!(LayerName))]
    layer: LayerName,
    /// Channels: a range `0..16` or a list `1,5,9`.
    #[arg(long, default_value = "0..8")]
    channels: String,
    /// Top inputs per channel.
    #[arg(short, long, default_value_t = 9, value_parser = crate::values::count::<usize>)]
    k: usize,
    /// Batch size of the scan.
    #[arg(long, default_value_t = 64, value_parser = crate::values::count::<usize>)]
    batch: usize,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

pub(crate) fn options(c: &Common) -> RenderOptions {
    RenderOptions {
        percentile: c.percentile,
        scale: c.scale.max(1),
        ..RenderOptions::default()
    }
}

fn preprocessing(loaded: &weights::Loaded, label: &str) -> Preprocessing {
    loaded.preprocessing.clone().unwrap_or_else(|| {
        eprintln!("warning: {label} records no preprocessing; scaling pixels to [0, 1]");
        Preprocessing::scale()
    })
}

pub fn run(args: &Args) -> Result<()> {
    match &args.top {
        Some(Sub::Top(t)) => return top(t),
        Some(Sub::Sanity(t)) => return crate::trust::run(t),
        None => {}
    }
    let model_args = &args.model;
    let (Some(method), Some(out)) = (args.method, &args.out) else {
        usage!("allcnn viz needs --method, --input and --out (see --help)");
    };
    crate::values::once_each("--compare", &args.compare)?;
    let inputs = model_args.weights.iter().chain(&args.input);
    let kind = if is_safetensors(out) {
        OutKind::File
    } else {
        OutKind::Folder("a folder for the maps (or a .safetensors file for the raw tensor)")
    };
    crate::out::check(out, kind, inputs.map(PathBuf::as_path))?;
    if is_safetensors(out) {
        crate::out::replaceable(out, "attribution")?;
    }
    let device = args.common.device.open()?;
    let loaded = weights::load(model_args, &device)?;
    let model = &loaded.file.model;
    // The settings and the target are checked against the model before
    // anything runs or is printed.
    let settings = args.settings.options()?;
    if let Some(layer) = settings.layer {
        model
            .check_layer(layer)
            .map_err(|e| anyhow::anyhow!("--layer: {e}"))?;
    }
    // The comparison figure's methods too, where one is drawn.
    let mut used = vec![method];
    if !is_safetensors(out) {
        used.extend(args.compare.iter().filter(|m| **m != method));
    }
    args.settings.warn_unused(&used);
    let (input, labels, names) = read_input(&args.input, &loaded, model_args, &device)?;
    // The names of the PNGs this command writes (without `.png`).
    let prefix = if args.overlay {
        format!("{method}-overlay-")
    } else {
        format!("{method}-")
    };
    let stems = file_stems(&prefix, &names, input.dim(0)?);
    if !is_safetensors(out) {
        // None of them an input image (one found in an --input folder that
        // is also --out, say).
        let planned: Vec<PathBuf> = stems
            .iter()
            .map(|stem| out.join(format!("{stem}.png")))
            .chain([out.join(COMPARISON)])
            .collect();
        crate::out::refuse_writing_over_inputs(out, &planned, names.iter().map(Path::new))?;
    }
    let fixed_target = match &args.target {
        TargetSpec::Predicted => None,
        spec => Some(spec.resolve(model, &input, labels.as_ref())?),
    };
    // What the model sees in each image, so the maps can be read.
    let mut row_labels = Vec::new();
    let mut written = Written {
        target: Some(args.target.to_string()),
        ..Written::default()
    };
    let json = args.common.json;
    // The predictions printed below are not what the maps explain.
    if !json && !matches!(args.target, TargetSpec::Predicted) {
        let name = match (&args.target, loaded.class_names.as_deref()) {
            (TargetSpec::Class(k), Some(names)) if (*k as usize) < names.len() => {
                format!(" ({})", crate::printable_name(&names[*k as usize]))
            }
            _ => String::new(),
        };
        outln!("maps of {method} for --target {}{name}", args.target)?;
    }
    // The logits, when the predictions are printed: `predicted` then reuses
    // them instead of running the model a second time.
    let mut logits = None;
    {
        // A tensor file's images have no names: they are counted.
        let shown: Vec<String> = if names.is_empty() {
            (0..input.dim(0)?).map(|i| format!("image {i}")).collect()
        } else {
            names.clone()
        };
        let l = logits.insert(model.forward(&input)?);
        let guesses = top_guesses(l, 1, loaded.class_names.as_deref())?;
        for (name, g) in shown.iter().zip(guesses.iter().filter_map(|g| g.first())) {
            let class = g
                .name
                .clone()
                .unwrap_or_else(|| format!("class {}", g.class));
            if !json {
                outln!(
                    "{}: {} ({:.1}%)",
                    crate::printable_name(name),
                    crate::printable_name(&class),
                    100.0 * g.probability
                )?;
            }
            written.predictions.push(Prediction {
                input: name.clone(),
                class: g.class,
                name: g.name.clone(),
                probability: g.probability,
            });
            row_labels.push(format!("{class} {:.0}%", 100.0 * g.probability));
        }
    }
    let target = match (fixed_target, &logits) {
        (Some(target), _) => target,
        (None, Some(logits)) => {
            let target = Target::PerImage(allcnn_viz::predicted_classes(logits)?);
            target.validate(model, input.dims())?;
            target
        }
        (None, None) => TargetSpec::Predicted.resolve(model, &input, labels.as_ref())?,
    };
    let maps = method.attribute_with(model, &input, &target, &settings)?;
    // A map of zeros draws as flat grey, which looks like a bug: say why.
    let peaks = maps
        .abs()?
        .flatten_from(1)?
        .max(1)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let flat: Vec<usize> = (0..peaks.len()).filter(|&i| peaks[i] == 0.0).collect();
    if let Some(&first) = flat.first() {
        let which = names.get(first).map_or_else(
            || format!("image {first}"),
            |n| crate::printable_name(n).into_owned(),
        );
        let others = crate::and_more(flat.len(), "image");
        eprintln!(
            "note: the {method} map of {which}{others} is zero everywhere (drawn flat grey): the target's output has no gradient there (a unit that does not fire, a ReLU that is off, a class map at 0)"
        );
    }
    if is_safetensors(out) {
        crate::predict::save_tensor("attribution", &maps, out)?;
        if json {
            written.files.push(out.clone());
            outln!("{}", serde_json::to_string_pretty(&written)?)?;
        } else {
            outln!(
                "wrote {} maps {:?} to {}",
                method,
                maps.dims(),
                out.display()
            )?;
        }
        return Ok(());
    }
    let opts = options(&args.common);
    // Every compared method's maps and the figure first: a method that
    // fails (its settings do not fit) or a figure too large leaves no
    // half-written folder behind.
    let columns: Vec<Method> = std::iter::once(method)
        .filter(|m| !args.compare.contains(m))
        .chain(args.compare.iter().copied())
        .collect();
    let all = columns
        .iter()
        .map(|&m| {
            let map = if m == method {
                maps.clone()
            } else {
                m.attribute_with(model, &input, &target, &settings)?
            };
            Ok((m, map))
        })
        .collect::<Result<Vec<_>>>()?;
    let comparison = render::labelled_comparison_grid(&input, &all, &row_labels, &opts)?;
    let files = if args.overlay {
        let o = render::OverlayOptions {
            sign: args.sign,
            colormap: args.colormap,
            alpha: args.alpha,
            percentile: args.common.percentile,
        };
        // Image files are shown as they are, not as the network sees them
        // (after GCN + ZCA).
        let shown = if names.is_empty() {
            input.clone()
        } else {
            let paths: Vec<PathBuf> = names.iter().map(PathBuf::from).collect();
            // Already said when the images were loaded for the maps.
            let mut said = crate::predict::InputNotes::default();
            load_images(
                &paths,
                input.dim(3)?,
                &Preprocessing::scale(),
                &device,
                &mut said,
            )?
        };
        let mut files = Vec::new();
        for (i, stem) in stems.iter().enumerate() {
            let img = render::overlay(&shown.get(i)?, &maps.get(i)?, &o)?;
            let path = out.join(format!("{stem}.png"));
            render::write_png(&render::upscale(&img, opts.scale), &path)?;
            files.push(path);
        }
        files
    } else {
        render::write_maps(&maps, args.settings.style(method), &opts, out, &stems)?
    };
    let grid = out.join(COMPARISON);
    render::write_png(&comparison, &grid)?;
    if json {
        written.files = files;
        written.files.push(grid);
        outln!("{}", serde_json::to_string_pretty(&written)?)?;
        return Ok(());
    }
    outln!(
        "wrote {} and {} to {}",
        crate::count(files.len() as u64, &format!("{method} map")),
        grid.file_name().unwrap_or_default().to_string_lossy(),
        out.display()
    )?;
    Ok(())
}

/// The figure of every image beside its maps, in the `--out` folder.
const COMPARISON: &str = "comparison.png";

/// Output file stems for `n` maps: `{prefix}{stem of the input file}`
/// (`guided-backprop-cat` for `cat.jpg`) when every input file has its own
/// stem, `{prefix}{i:04}-{stem}` when two share one (`train/cat/0.png` and
/// `train/dog/0.png`), `{prefix}{i:04}` for a tensor file.
fn file_stems(prefix: &str, inputs: &[String], n: usize) -> Vec<String> {
    let stems: Vec<String> = inputs
        .iter()
        .map(|p| {
            std::path::Path::new(p)
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
        })
        .collect();
    let distinct = stems.iter().collect::<std::collections::HashSet<_>>().len() == stems.len();
    (0..n)
        .map(|i| match stems.get(i) {
            Some(stem) if distinct && !stem.is_empty() => format!("{prefix}{stem}"),
            Some(stem) => format!("{prefix}{i:04}-{stem}"),
            None => format!("{prefix}{i:04}"),
        })
        .collect()
}

/// The images of `--input`: a `.safetensors` file with a preprocessed
/// `input` (and maybe `labels`), or image files and folders preprocessed as
/// the weights record; with the image names (none for a tensor file).
pub(crate) fn read_input(
    inputs: &[PathBuf],
    loaded: &weights::Loaded,
    model_args: &ModelArgs,
    device: &Device,
) -> Result<(
    candle_core::Tensor,
    Option<candle_core::Tensor>,
    Vec<String>,
)> {
    let model = &loaded.file.model;
    crate::predict::tensor_file_alone(inputs, "explained")?;
    if inputs.len() == 1 && is_safetensors(&inputs[0]) {
        let (input, labels) = load_tensor_file(&inputs[0], device, Some(model.classes()))?;
        return Ok((input, labels, Vec::new()));
    }
    let paths = image_paths(inputs)?;
    let side = loaded
        .file
        .meta
        .input_size
        .unwrap_or(model.spec().input_size);
    let pre = preprocessing(loaded, &model_args.label());
    let names = paths.iter().map(|p| p.display().to_string()).collect();
    let mut notes = crate::predict::InputNotes::default();
    let x = load_images(&paths, side, &pre, device, &mut notes)?;
    notes.note();
    Ok((x, None, names))
}

fn parse_channels(s: &str) -> Result<Vec<usize>> {
    // No layer has more channels: a range past it is refused before it is
    // built (`0..100000000000` took gigabytes to say "out of range").
    let most = allcnn_models::SpecLimits::DEFAULT.channels;
    let usage = "use a range like 0..16 or a list like 1,5,9";
    let number = |t: &str| {
        let t = t.trim();
        t.parse::<usize>().map_err(|_| {
            anyhow::Error::from(crate::Usage(format!(
                "--channels {s}: `{t}` is not a channel number; {usage}"
            )))
        })
    };
    let channels: Vec<usize> = if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (number(a)?, number(b)?);
        if a >= b {
            usage!("--channels {s}: the range is empty (its end is excluded); {usage}");
        }
        if b > most {
            usage!("--channels {s}: no layer has more than {most} channels");
        }
        (a..b).collect()
    } else {
        let list = s.split(',').map(number).collect::<Result<Vec<_>>>()?;
        if let Some(c) = crate::values::first_repeat(&list) {
            usage!("--channels {s}: channel {c} is listed twice");
        }
        list
    };
    Ok(channels)
}

fn top(args: &TopArgs) -> Result<()> {
    let inputs = args.model.weights.iter().map(PathBuf::as_path);
    crate::out::check(&args.out, OutKind::File, inputs)?;
    if !args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        bail!(
            "--out {}: viz top writes one PNG figure; give a file name ending in .png",
            args.out.display()
        );
    }
    crate::out::outside_data(&args.out, &args.data)?;
    let device = args.common.device.open()?;
    let loaded = weights::load(&args.model, &device)?;
    let model = &loaded.file.model;
    let layer = args.layer;
    model
        .check_layer(layer)
        .map_err(|e| anyhow::anyhow!("--layer: {e}"))?;
    let channels = parse_channels(&args.channels)?;
    let mut data = crate::data::open_split(&args.data, args.split, &OpenOptions::default(), false)?;
    if let Some(limit) = args.limit {
        data = std::sync::Arc::new(allcnn_data::Subset::random(data, limit, args.seed));
    }
    let loader = DataLoader::builder(data)
        .preprocessing(preprocessing(&loaded, &args.model.label()))
        .batch_size(args.batch)
        .shuffle(false)
        .device(device.clone())
        .build()?;
    if loader.num_examples() < args.k {
        eprintln!(
            "note: {} scanned, fewer than -k {}: each row shows them all",
            crate::count(loader.num_examples() as u64, "image"),
            args.k
        );
    }
    let mut top = TopActivations::new(model, layer, channels.clone(), args.k)?;
    let bar = crate::progress::bar(loader.num_examples() as u64, "scanning");
    for batch in loader.epoch(0) {
        let batch = batch?;
        top.push(&batch.images)?;
        bar.inc(batch.indices.len() as u64);
    }
    bar.finish_and_clear();
    let fig = top.reconstruct(&[Method::GuidedBackprop, Method::Deconvnet])?;
    // The class layer's channels are the classes: its rows say which.
    let class_layer = model
        .layer_names()
        .into_iter()
        .rfind(|l| matches!(l, LayerName::Conv(_)));
    let names = loaded
        .class_names
        .as_deref()
        .filter(|_| class_layer == Some(layer));
    let img = render::labelled_top_activation_grid(&fig, names, &options(&args.common))?;
    render::write_png(&img, &args.out)?;
    if args.common.json {
        let written = Written {
            files: vec![args.out.clone()],
            scanned: Some(top.seen()),
            layer: Some(args.layer.to_string()),
            channels: Some(channels),
            ..Default::default()
        };
        outln!("{}", serde_json::to_string_pretty(&written)?)?;
        return Ok(());
    }
    outln!(
        "scanned {}; wrote the {} figure to {}",
        crate::count(top.seen() as u64, "image"),
        args.layer,
        args.out.display()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{file_stems, parse_channels};

    #[test]
    fn channels_are_bounded_before_they_are_built() {
        assert_eq!(parse_channels("0..4").unwrap(), [0, 1, 2, 3]);
        assert_eq!(parse_channels("5, 1,9").unwrap(), [5, 1, 9]);
        for (bad, says) in [
            ("0..100000000000", "no layer has more than 16384 channels"),
            ("5..5", "the range is empty"),
            ("5..2", "the range is empty"),
            ("1,1", "channel 1 is listed twice"),
            ("abc", "`abc` is not a channel number"),
            ("0..", "`` is not a channel number"),
        ] {
            let err = parse_channels(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn map_files_are_named_after_their_images() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            file_stems("gb-", &names(&["docs/samples/cat.jpg", "x/dog.png"]), 2),
            ["gb-cat", "gb-dog"]
        );
        assert_eq!(
            file_stems("gb-", &names(&["train/cat/0.png", "train/dog/0.png"]), 2),
            ["gb-0000-0", "gb-0001-0"]
        );
        assert_eq!(file_stems("gb-", &[], 2), ["gb-0000", "gb-0001"]);
    }
}
