//! `allcnn`: the command line of the allcnn crates. It only parses flags,
//! wires the library crates together and reports errors; the work lives in
//! `allcnn-models` (and, as they land, the data, train and viz crates).

/// `println!` that returns an error instead of panicking when stdout cannot
/// be written (a full disk, `> /dev/full`, a closed pipe where SIGPIPE is
/// ignored): `outln!(...)?` in a function returning `anyhow::Result`.
macro_rules! outln {
    ($($arg:tt)*) => {
        crate::stdout_line(format_args!($($arg)*))
    };
}

/// `print!`'s fallible twin, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        crate::stdout_write(format_args!($($arg)*))
    };
}

/// Returns a [`Usage`] error (exit status 2, as clap's own usage errors):
/// arguments that clap accepts one by one but that do not go together or
/// leave something out.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(crate::Usage(format!($($arg)*)).into())
    };
}

mod bench;
mod data;
mod device;
mod export;
mod models;
mod out;
mod predict;
mod pretrained;
mod progress;
mod reproduce;
mod train;
mod trust;
mod values;
mod viz;
mod weights;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// glibc's allocator returns every large buffer (activations, Winograd
/// transforms: tens of MB) to the kernel with `munmap` and takes it back with
/// `mmap` on the next step: page faults, page zeroing and TLB shootdowns cost
/// 10-25% of a CPU training step. mimalloc keeps freed pages for reuse.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc still hands freed pages back to the OS ("purges" them), and a
/// training step frees and reallocates the same few hundred MB every half
/// second, so every purged page is faulted in and zeroed again on the next
/// step. A purge delay of ten seconds was not enough: `MIMALLOC_SHOW_STATS`
/// still counted 619 purges (692 MiB) in a 13-step `allcnn bench --mode
/// train --batch 128`, about 590 page faults per step. The process never
/// purges now (-1): its memory stays at the peak of a step, which it reaches
/// again on the next one anyway, and goes back to the OS at exit. Faults per
/// step: 590 -> 0 (`perf stat -e page-faults`, 4 vs 20 steps).
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn tune_allocator() {
    /// `mi_option_purge_delay` (milliseconds): the same index in mimalloc v2
    /// and v3, which libmimalloc-sys does not export as a constant.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: runs first in `main`, before any other thread exists (the
    // option setters are not thread safe); it only stores an option value.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}

#[cfg(not(feature = "mimalloc"))]
fn tune_allocator() {}

/// Writes one line to stdout; the error says what could not be written.
pub(crate) fn stdout_line(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    stdout_write(format_args!("{args}\n"))
}

/// Writes to stdout (flushed where it is a pipe or file, at the end of the
/// process otherwise by the line buffer); the error says what failed.
pub(crate) fn stdout_write(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write the output to stdout: {e}"))
}

/// A closed stdout (`allcnn ... | head`) ends the program quietly, as for
/// other Unix tools, instead of panicking in `println!`: Rust ignores
/// SIGPIPE by default; this restores the default action.
#[cfg(unix)]
#[allow(unsafe_code)]
fn quiet_broken_pipe() {
    // SAFETY: runs first in `main`, before other threads; it only sets the
    // disposition of one signal to the default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn quiet_broken_pipe() {}

/// Reproduce "Striving for Simplicity: The All Convolutional Net"
/// (Springenberg et al., 2014) on CPU, CUDA or Metal.
#[derive(Parser)]
#[command(
    name = "allcnn",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Examples to start with (the All-CNN-C shipped inside the binary; ten sample images in the repository's docs/samples):\n  allcnn viz --method guided-backprop --input docs/samples --out maps   # classify, and write maps/comparison.png\n  allcnn predict docs/samples --top-k 3\n  allcnn pretrained list\n  allcnn train --preset cifar10 --data data/cifar-10-batches-bin --out runs/allcnn-c\n\n`allcnn <command> --help` shows each command's options and examples; docs/getting-started.md walks through all of them."
)]
struct Cli {
    /// More messages on stderr: -v for progress notes from the libraries,
    /// -vv for debugging. Warnings are always shown; RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// `n` and `noun`, the noun in the plural unless `n` is 1: "1 epoch",
/// "2 epochs".
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `` and N more NOUNs`` after the first of `n` things named, or nothing
/// when `n` is 1: "a.png and 2 more images".
pub(crate) fn and_more(n: usize, noun: &str) -> String {
    match n {
        0 | 1 => String::new(),
        n => format!(" and {}", count(n as u64 - 1, &format!("more {noun}"))),
    }
}

/// `text` safe to print on a terminal: control characters other than line
/// breaks and tabs (an ANSI escape in a class name from a weights file or a
/// folder name) are shown escaped, as `\u{1b}`, instead of being sent to
/// the terminal.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    allcnn_data::info::printable(text)
}

/// A file or class name as one line: every control character escaped
/// (`\n`, `\t` too, which [`printable`] keeps for multi-line text), so a
/// name cannot split a line of output or move the cursor.
pub(crate) fn printable_name(name: &str) -> std::borrow::Cow<'_, str> {
    allcnn_data::info::one_line(name)
}

/// Sends the libraries' `log` records to stderr as `warning: ...` lines
/// (warnings and errors by default, more with -v), so that nothing they
/// report is lost.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format(|buf, record| {
            use std::io::Write;
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "note",
                log::Level::Debug | log::Level::Trace => "debug",
            };
            writeln!(buf, "{level}: {}", record.args())
        })
        .init();
}

#[derive(Subcommand)]
enum Command {
    /// List every architecture of the paper: layers, parameters, map size, paper error.
    #[command(
        after_help = "Examples:\n  allcnn models\n  allcnn models --classes 100\n  allcnn models --json"
    )]
    Models(models::Args),
    /// Download datasets and inspect them.
    #[command(
        subcommand,
        after_help = "Examples:\n  allcnn data download cifar10 --dir data\n  allcnn data info data/cifar-10-batches-bin"
    )]
    Data(data::Command),
    /// Train a model with the paper's protocol (a preset or a config file), or resume a run.
    #[command(
        after_help = "Examples:\n  allcnn train --preset cifar10 --model all-cnn-c --data data/cifar-10-batches-bin --out runs/allcnn-c\n  allcnn train --preset cifar10 --data data --out runs/short epochs=10 data.train_subset=5000 schedule.kind=scaled\n  allcnn train --preset cifar10 --print-config > my.toml   # edit, then: allcnn train --config my.toml --data D --out RUN\n  allcnn train --preset cifar10 --data D --out runs/grid --grid --lrs 0.1,0.05,0.01 data.validation=5000\n  allcnn train --resume runs/allcnn-c\n  allcnn train --resume runs/allcnn-c --epochs 40   # continue a finished run to 40 epochs, or end one sooner\n\nCtrl-C finishes the current step, writes a checkpoint and prints how to resume.\n\nExit status: 0 finished (also for --resume of a run that has finished: nothing is redone), 75 stopped\nby --time-limit (resume it), 130 stopped by Ctrl-C, 1 an error, 2 a usage error."
    )]
    Train(Box<train::TrainArgs>),
    /// Evaluate weights on a data set: top-1/top-5 accuracy, loss, per-class accuracy.
    #[command(
        after_help = "Examples:\n  allcnn eval --data data/cifar-10-batches-bin                 # the shipped All-CNN-C (allcnn data download cifar10)\n  allcnn eval --weights runs/allcnn-c/best.safetensors --data data/cifar-10-batches-bin\n  allcnn eval --weights w.safetensors --data my-images/ --json   # an image folder; with the confusion matrix"
    )]
    Eval(train::EvalArgs),
    /// Redraw a run's learning curves (SVG) and metrics.csv from its metrics.jsonl.
    #[command(
        after_help = "Examples:\n  allcnn plot runs/allcnn-c\n  allcnn plot runs/allcnn-c --log-loss --out figures/"
    )]
    Plot(train::PlotArgs),
    /// Run one of the paper's experiments (all twelve models for table3), resumably, with a report beside the paper's numbers.
    #[command(
        after_help = "Experiments: table3 (the twelve CIFAR-10 models, preset cifar10), cifar10-aug (All-CNN-C with\nflips and translations), cifar100 (All-CNN-C), imagenet (the ImageNet All-CNN).\n\nEach model trains into OUT/<model>/; OUT/report.md and OUT/report.json (our test error beside\nthe paper's, times, device, host, exact configs) and OUT/comparison.svg (the same as a figure)\nare rewritten after every model. Rerunning the\nsame command skips finished models and resumes an interrupted one.\n\nExamples:\n  allcnn reproduce table3 --data data/cifar-10-batches-bin --out runs/table3\n  allcnn reproduce table3 --data data/cifar-10-batches-bin --out runs/table3-35 --epochs 35\n  allcnn reproduce table3 --data D --out runs/t3-small --epochs 5 --models model-c,all-cnn-c data.train_subset=5000\n  allcnn reproduce cifar100 --data data/cifar-100-binary --out runs/c100 --device cuda\n  allcnn reproduce imagenet --data IMAGENET_DIR --out runs/imagenet --device cuda --json\n\nCtrl-C finishes the current step, writes a checkpoint and stops; run the same command to resume.\n\nExit status: 0 every row done, 75 stopped by --time-limit, 130 stopped by Ctrl-C, 1 an error."
    )]
    Reproduce(Box<reproduce::Args>),
    /// Classify images (or a preprocessed tensor) with trained weights.
    #[command(
        after_help = "Examples:\n  allcnn predict docs/samples                                   # the shipped All-CNN-C\n  allcnn predict --weights run/best.safetensors cat.png dog.jpg\n  allcnn predict --weights w.safetensors --model all-cnn-c --classes 10 images/ --top-k 3 --json\n  allcnn predict --weights w.safetensors batch.safetensors --out logits.safetensors\n  allcnn predict --weights hf://OWNER/REPO cat.png             # Hugging Face Hub, cached\n  allcnn predict --weights hf://OWNER/REPO/best.safetensors@v1 --offline cat.png\n\nEnvironment: ALLCNN_OFFLINE=1 or HF_HUB_OFFLINE=1 (as --offline), HF_HUB_CACHE or HF_HOME\n(the cache), HF_ENDPOINT (the server), HF_TOKEN (private or gated repositories)."
    )]
    Predict(predict::Args),
    /// Attribution maps (the paper's gradient, deconvnet and guided backpropagation, and 15 more from Captum's family: saliency, input x gradient, integrated gradients, Grad-CAM, DeepLIFT, SHAP, LRP, occlusion, LIME, ...) and the paper's figures.
    #[command(
        after_help = "Examples:\n  allcnn viz --method guided-backprop --input docs/samples --out maps   # the shipped All-CNN-C\n  allcnn viz --weights run/best.safetensors --method guided-backprop --input cat.png --target predicted --out maps/\n  allcnn viz --weights w.safetensors --method deconvnet --input batch.safetensors --target labels --out maps.safetensors\n  allcnn viz --weights w.safetensors --method guided-backprop --input imgs/ --target unit:conv7:7:3:3 --out maps/\n  allcnn viz top --weights w.safetensors --data data/cifar-10-batches-bin --layer conv6 --channels 0..16 -k 9 --out conv6.png\n  allcnn viz top --data data/cifar-10-batches-bin --limit 2000 --layer conv9 --channels 0..8 --out conv9.png"
    )]
    Viz(Box<viz::Args>),
    /// The weights shipped inside allcnn (the default of predict, eval and viz): list, save, card.
    #[command(
        subcommand,
        after_help = "Examples:\n  allcnn pretrained list\n  allcnn pretrained save all-cnn-c-cifar10 --out all-cnn-c.safetensors\n  allcnn pretrained card"
    )]
    Pretrained(pretrained::Command),
    /// Write a run's weights as a folder ready to upload as a Hugging Face model repo.
    #[command(
        after_help = "Writes model.safetensors (weights, architecture, classes, preprocessing), config.json\n(architecture, preprocessing, training recipe, results) and a model card README.md;
with --eval-data also eval.json, the exported file's own evaluation.\n\nExamples:\n  allcnn export-hub runs/allcnn-c --out hub/allcnn-c --repo me/all-cnn-c-cifar10\n  allcnn export-hub runs/allcnn-c --out hub/allcnn-c --weights best --force\n  allcnn export-hub runs/allcnn-c --out hub/allcnn-c --whitening-rank 1024 --f16-weights --eval-data data/cifar-10-batches-bin\n  hf upload me/all-cnn-c-cifar10 hub/allcnn-c .   # then: allcnn predict --weights hf://me/all-cnn-c-cifar10 cat.png"
    )]
    ExportHub(export::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  allcnn completions bash > /etc/bash_completion.d/allcnn")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write one page per subcommand
    /// into a folder.
    #[command(
        after_help = "The page on stdout covers the top level; its SUBCOMMANDS section names allcnn-train(1) and the\nother subcommand pages, which --out writes (allcnn.1, allcnn-train.1, allcnn-data-download.1, ...).\n\nExamples:\n  allcnn man > allcnn.1 && man ./allcnn.1\n  allcnn man --out ~/.local/share/man/man1 && man allcnn-train"
    )]
    Man {
        /// Write allcnn.1 and one page per subcommand into this folder
        /// (created if missing) instead of printing the top-level page.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Measure training-step or inference speed of a model (one JSON line).
    #[command(after_help = "Example:\n  allcnn bench --model all-cnn-c --batch 64 --mode infer")]
    Bench(bench::Args),
}

/// A run that stopped before its end with a checkpoint to resume from:
/// not an error (nothing is printed as one), but not done either, so a
/// script's `allcnn train ... && allcnn export-hub ...` does not go on.
/// The exit status says why: 130 for Ctrl-C (as a shell reports SIGINT),
/// 75 for `--time-limit` (`EX_TEMPFAIL`: run the resume later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Ctrl-C.
    Interrupted,
    /// `--time-limit` passed.
    TimeLimit,
}

impl Stopped {
    /// What stopped a run that `trainer` was running.
    pub(crate) fn of(trainer: &allcnn_train::Trainer) -> Self {
        if trainer.past_deadline() {
            Stopped::TimeLimit
        } else {
            Stopped::Interrupted
        }
    }

    fn code(self) -> u8 {
        match self {
            Stopped::Interrupted => 130,
            Stopped::TimeLimit => 75,
        }
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::Interrupted => "interrupted",
            Stopped::TimeLimit => "stopped at the time limit",
        })
    }
}

impl std::error::Error for Stopped {}

/// A command line that is wrong as a whole (see [`usage!`]): exit status 2.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// `allcnn man --out DIR`: the top-level page and one per subcommand
/// (`allcnn-train.1`, `allcnn-data-download.1`, ...), which the top page's
/// SEE ALSO names.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    out::check(dir, out::OutKind::Folder("a folder for the pages"), [])?;
    if std::fs::symlink_metadata(dir).is_ok() && !dir.exists() {
        anyhow::bail!(
            "--out {}: is a link to nothing; give a folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    // Made aside first, then moved in page by page once every place is
    // known to take a page: a link there was written through (to a file
    // outside the folder), and a folder in the way left some pages.
    let staging = dir.join(format!(".allcnn-man-{}", std::process::id()));
    std::fs::create_dir(&staging)
        .map_err(|e| anyhow::anyhow!("cannot write into {}: {e}", dir.display()))?;
    let result = move_pages_in(&staging, dir);
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    outln!(
        "wrote allcnn.1 and a page per subcommand into {} (e.g. `man {}`)",
        dir.display(),
        dir.join("allcnn-train.1").display()
    )
}

/// Generates the pages into `staging`, then moves them into `dir` once
/// every place there takes a regular file.
fn move_pages_in(staging: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    clap_mangen::generate_to(Cli::command(), staging)
        .map_err(|e| anyhow::anyhow!("cannot write the man pages into {}: {e}", dir.display()))?;
    let mut pages: Vec<std::path::PathBuf> = std::fs::read_dir(staging)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();
    for page in &pages {
        let to = dir.join(page.file_name().unwrap_or_default());
        if let Ok(m) = std::fs::symlink_metadata(&to) {
            if !m.is_file() {
                anyhow::bail!(
                    "{}: is in the way of a page (a link, a folder or another non-file): move it away; no page was written",
                    to.display()
                );
            }
        }
    }
    for page in &pages {
        let to = dir.join(page.file_name().unwrap_or_default());
        std::fs::rename(page, &to)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", to.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    tune_allocator();
    quiet_broken_pipe();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Models(args) => models::run(&args),
        Command::Data(cmd) => data::run(&cmd),
        Command::Predict(args) => predict::run(&args),
        Command::Train(args) => train::run_train(&args),
        Command::Eval(args) => train::run_eval(&args),
        Command::Plot(args) => train::run_plot(&args),
        Command::Reproduce(args) => reproduce::run(&args),
        Command::Viz(args) => viz::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::ExportHub(args) => export::run(&args),
        Command::Pretrained(cmd) => pretrained::run(&cmd),
        Command::Completions { shell } => {
            // Into memory first: `generate` panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "allcnn", &mut script);
            out!("{}", String::from_utf8_lossy(&script))
        }
        Command::Man { out: Some(dir) } => man_pages(&dir),
        Command::Man { out: None } => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => out!("{}", String::from_utf8_lossy(&page)),
                Err(e) => Err(anyhow::anyhow!("cannot render the man page: {e}")),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Stopped>() {
            // The command has said how it stopped and how to resume.
            Some(stopped) => ExitCode::from(stopped.code()),
            None if e.downcast_ref::<Usage>().is_some() => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every command and subcommand's `--help` ends with examples (the
    /// promise of allcnn-cli/README.md).
    #[test]
    fn every_command_help_has_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            let help = cmd.get_after_help().map(|h| h.to_string());
            if !help.is_some_and(|h| h.contains("Example")) {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no examples in --help of: {missing:?}");
    }

    /// The summary of `viz` counts the methods beyond the paper's three.
    #[test]
    fn viz_summary_counts_its_methods() {
        let cli = Cli::command();
        let viz = cli.find_subcommand("viz").unwrap();
        let about = viz.get_about().unwrap().to_string();
        let more = allcnn_viz::Method::ALL.len() - 3;
        assert!(about.contains(&format!("and {more} more")), "{about}");
    }
}
