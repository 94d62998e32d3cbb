//! `allcnn`: the command line of the allcnn crates. It only parses flags,
//! wires the library crates together and reports errors; the work lives in
//! `allcnn-models` (and, as they land, the data, train and viz crates).

mod bench;
mod device;
mod models;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Reproduce "Striving for Simplicity: The All Convolutional Net"
/// (Springenberg et al., 2014) on CPU, CUDA or Metal.
#[derive(Parser)]
#[command(name = "allcnn", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every architecture of the paper: layers, parameters, map size, paper error.
    #[command(
        after_help = "Examples:\n  allcnn models\n  allcnn models --classes 100\n  allcnn models --json"
    )]
    Models(models::Args),
    /// Measure inference speed of a model (one JSON line).
    #[command(after_help = "Example:\n  allcnn bench --model all-cnn-c --batch 64 --mode infer")]
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Models(args) => models::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
