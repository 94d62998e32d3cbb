//! `allcnn data download|info`.

use std::path::PathBuf;

use allcnn_data::{download::download_cifar, download::DownloadOptions, info::info, CifarKind};
use anyhow::Result;
use clap::Subcommand;

use crate::values::DatasetArg;

#[derive(Subcommand)]
pub enum Command {
    /// Fetch CIFAR-10 or CIFAR-100 (official binary archive), verify its MD5, extract it.
    #[command(
        after_help = "Examples:\n  allcnn data download cifar10 --dir data\n  allcnn data download cifar100 --dir data --url http://mirror.example/cifar-100-binary.tar.gz\n\nAn interrupted download is resumed when the command runs again."
    )]
    Download {
        /// The data set.
        #[arg(value_enum)]
        dataset: crate::values::DatasetArg,
        /// Folder to download and extract into.
        #[arg(long, default_value = "data")]
        dir: PathBuf,
        /// Download from this URL instead of the official one (a mirror).
        #[arg(long, value_parser = crate::values::http_url)]
        url: Option<String>,
        /// Expected MD5 of the archive when --url serves a different file.
        #[arg(long, value_parser = crate::values::md5)]
        md5: Option<String>,
        /// Download and extract again even if the dataset is already there.
        #[arg(long)]
        force: bool,
        /// Delete the archive after extracting it.
        #[arg(long)]
        remove_archive: bool,
        /// Refuse a download larger than this many bytes (default 512 MiB;
        /// the CIFAR archives are about 170 MB).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a dataset's format, split sizes and per-class counts.
    #[command(
        after_help = "Examples:\n  allcnn data info data/cifar-10-batches-bin\n  allcnn data info my-images/ --json     (an image folder with train/<class>/ and test/<class>/)"
    )]
    Info {
        /// A CIFAR binary folder or an image folder (root/<split>/<class>/<image>).
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: &Command) -> Result<()> {
    match cmd {
        Command::Download {
            dataset,
            dir,
            url,
            md5,
            force,
            remove_archive,
            max_bytes,
            json,
        } => {
            let (kind, name) = match dataset {
                DatasetArg::Cifar10 => (CifarKind::Cifar10, "cifar10"),
                DatasetArg::Cifar100 => (CifarKind::Cifar100, "cifar100"),
            };
            let opts = DownloadOptions {
                url: url.clone(),
                md5: md5.clone(),
                progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                remove_archive: *remove_archive,
                force: *force,
                timeout: None,
                body_timeout: None,
                idle_timeout: None,
                max_bytes: *max_bytes,
            };
            let out = download_cifar(kind, dir, &opts)?;
            if *json {
                outln!("{}", serde_json::to_string(&out)?)?;
            } else if out.already_present {
                outln!(
                    "{} is already complete in {}",
                    name,
                    out.dataset_dir.display()
                )?;
            } else {
                outln!(
                    "{} ready in {} ({} bytes downloaded{})",
                    name,
                    out.dataset_dir.display(),
                    out.downloaded_bytes,
                    if out.resumed { ", resumed" } else { "" }
                )?;
            }
        }
        Command::Info { path, json } => {
            let i = info(path)?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&i)?)?;
            } else {
                out!("{}", crate::printable(&i.to_string()))?;
            }
            for p in i.problems() {
                eprintln!("warning: {}", crate::printable_name(&p));
            }
        }
    }
    Ok(())
}

/// `--data` opened at `--split`, with the flag that picks the split the
/// folder has where it lacks this one, and with `--skip-bad-images` named
/// where the command has it (`skip_flag`).
pub fn open_split(
    data: &std::path::Path,
    split: crate::values::SplitArg,
    opts: &allcnn_data::OpenOptions,
    skip_flag: bool,
) -> Result<std::sync::Arc<dyn allcnn_data::Dataset>> {
    use allcnn_data::DataError;
    allcnn_data::open_dataset(data, split.into(), opts).map_err(|e| match &e {
        DataError::BadImage { .. } if skip_flag => anyhow::anyhow!(
            "{e}; remove or replace the file, or pass --skip-bad-images to leave out the images that cannot be read"
        ),
        // The split's own folder (not a mistyped --data path beside it).
        DataError::MissingFile { path, .. }
            if path
                .file_name()
                .is_some_and(|n| n == allcnn_data::Split::from(split).name())
                && path.parent().is_some_and(|p| {
                    allcnn_data::folder::has_split_folders(p)
                        && crate::out::same_folder(p, data)
                }) =>
        {
            let other = match split {
                crate::values::SplitArg::Train => "test",
                crate::values::SplitArg::Test => "train",
            };
            anyhow::anyhow!("{e}; pass --split {other}")
        }
        _ => e.into(),
    })
}
