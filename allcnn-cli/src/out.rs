//! `--out` checked before any work: not one of the command's inputs, and
//! writable as what the command writes (a file or a folder).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// What a command writes at `--out`.
#[derive(Debug, Clone, Copy)]
pub enum OutKind {
    /// A file, in a folder that exists; never in place of model weights.
    File,
    /// A file of model weights, which may replace other weights (the
    /// command asks for `--force` first).
    Weights,
    /// A folder (made if needed); the text says what to give instead of a
    /// file, e.g. "a folder for the maps".
    Folder(&'static str),
}

/// Fails before any work where `--out` is one of the command's `inputs`
/// (the weights file, an input image or tensor: writing it would destroy
/// what was read), is a file of model weights (a trained model or a
/// checkpoint, which no command's output should replace), or cannot be
/// written as `kind` at all: a file where a folder is or whose folder does
/// not exist, a folder where a file is.
pub fn check<'a>(
    out: &Path,
    kind: OutKind,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<()> {
    // The shell convention for standard output: no command writes there
    // (a file named `-` was made).
    if out == Path::new("-") {
        bail!("--out -: this command writes files, not to standard output; give a path");
    }
    refuse_overwriting_inputs(out, inputs)?;
    match kind {
        OutKind::File | OutKind::Weights => {
            if out.is_dir() {
                bail!("--out {}: is a folder; give a file path", out.display());
            }
            // A device, a FIFO or a socket (`--force` or not): writing
            // replaced a device node (`/dev/null` as root), and reading a
            // FIFO to see what it holds hung for ever.
            if let Ok(m) = std::fs::metadata(out) {
                if !m.is_file() {
                    bail!(
                        "--out {}: is not a regular file (a device, a FIFO or a socket); give a file path",
                        out.display()
                    );
                }
            }
            if let (OutKind::File, Some(name)) = (kind, parameter_in(out)) {
                bail!(
                    "--out {}: holds model weights (tensor {name}), which this command's output would replace; choose another path, or delete the file first if it is really to go",
                    out.display()
                );
            }
            let parent = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                bail!(
                    "--out {}: the folder {} does not exist; create it, or choose another path",
                    out.display(),
                    parent.display()
                );
            }
            writable(out, parent)?;
        }
        OutKind::Folder(what) => {
            if out.exists() && !out.is_dir() {
                bail!("--out {}: is a file; give {what}", out.display());
            }
            if !out.exists() {
                let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
                if FILE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) {
                    bail!(
                        "--out {}: looks like a file name (.{ext}), but this command writes a folder; give {what}",
                        out.display()
                    );
                }
                // The folder is made later, where the first file goes:
                // nothing is created for a command that fails before.
                let mut existing = out.parent();
                while let Some(p) = existing.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
                    existing = p.parent();
                }
                let existing = existing
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !existing.is_dir() {
                    bail!(
                        "--out {}: {} is a file, so no folder can be made there; choose another path",
                        out.display(),
                        existing.display()
                    );
                }
                writable(out, existing)?;
            } else {
                writable(out, out)?;
            }
        }
    }
    Ok(())
}

/// Names that `OutKind::Folder` refuses while they do not exist: what
/// the commands write are files of these kinds, not folders of them.
const FILE_EXTENSIONS: &[&str] = &[
    "png",
    "jpg",
    "jpeg",
    "gif",
    "bmp",
    "webp",
    "svg",
    "pdf",
    "json",
    "jsonl",
    "csv",
    "txt",
    "md",
    "html",
    "safetensors",
    "toml",
];

/// Fails where `folder` (the folder `out` goes in) is read-only: a
/// command would otherwise do its work and fail at the first write.
fn writable(out: &Path, folder: &Path) -> Result<()> {
    // On Windows the read-only attribute of a folder does not stop writes
    // (Explorer sets it on customised folders): Unix mode bits only.
    if !cfg!(unix) {
        return Ok(());
    }
    match std::fs::metadata(folder) {
        Ok(m) if m.permissions().readonly() => bail!(
            "--out {}: the folder {} is not writable; choose another path",
            out.display(),
            folder.display()
        ),
        _ => Ok(()),
    }
}

/// Fails where `out` holds a file that is not an earlier output of this
/// command (a safetensors file whose only tensor is `tensor`): a text
/// file, an image, or another tensor file, which replacing would lose.
/// Checked after [`check`], so weights files have their own message.
pub fn replaceable(out: &Path, tensor: &str) -> Result<()> {
    // Nothing there, or an empty file (`mktemp`'s): nothing to lose.
    if std::fs::metadata(out).map_or(true, |m| !m.is_file() || m.len() == 0) {
        return Ok(());
    }
    match tensor_names(out) {
        None => bail!(
            "--out {}: a file is already there, and not a safetensors file (this command writes one, tensor `{tensor}`); choose another path, or delete the file first",
            out.display()
        ),
        Some(names) if names != [tensor] => bail!(
            "--out {}: holds the tensors {} that this command's output (tensor `{tensor}` alone) would replace; choose another path, or delete the file first",
            out.display(),
            names.join(", ")
        ),
        Some(_) => Ok(()),
    }
}

/// Fails where a file the command is about to write (`planned`, the maps
/// under a `--out` folder) is one of its `inputs` (images found in a
/// folder included), which it would replace before the next run reads it.
pub fn refuse_writing_over_inputs<'a>(
    out: &Path,
    planned: &[PathBuf],
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<()> {
    let inputs = Inputs::new(inputs);
    for path in planned {
        if let Some(input) = inputs.at(path) {
            bail!(
                "--out {}: this command would write {} in place of its input {}; choose another output folder",
                out.display(),
                path.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// Fails where `out` (a file or a folder, made or to be made) lies inside
/// the data set folder `data`: a figure written there could replace one of
/// its images or be read as one, and a run or report folder there becomes
/// a class folder without images, which every later use of the data set
/// refuses. Its nearest existing folder is what is compared.
pub fn outside_data(out: &Path, data: &Path) -> Result<()> {
    let mut folder = out;
    let existing = loop {
        if folder.is_dir() {
            break Some(folder);
        }
        match folder.parent() {
            Some(p) if p.as_os_str().is_empty() => break Some(Path::new(".")),
            Some(p) => folder = p,
            None => break None,
        }
    };
    if let (Some(Ok(folder)), Ok(data_real)) = (
        existing.map(std::fs::canonicalize),
        std::fs::canonicalize(data),
    ) {
        if folder.starts_with(&data_real) {
            bail!(
                "--out {} lies inside the data set --data {}, where it could replace one of its images or be read as one; write it elsewhere",
                out.display(),
                data.display()
            );
        }
    }
    Ok(())
}

/// The tensor names in the header of the safetensors file `path`, sorted;
/// `None` when it is not one. Only the header is read.
fn tensor_names(path: &Path) -> Option<Vec<String>> {
    Some(allcnn_models::SafetensorsHeader::read(path).ok()?.tensors)
}

/// The name of a network parameter (`*.weight`) in `path`, when it is a
/// safetensors file that holds one: model weights or a training
/// checkpoint. Only the header is read.
fn parameter_in(path: &Path) -> Option<String> {
    tensor_names(path)?
        .into_iter()
        .find(|n| n.ends_with(".weight"))
}

fn refuse_overwriting_inputs<'a>(
    out: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<()> {
    if std::fs::canonicalize(out).is_err() {
        return Ok(()); // Not there yet: nothing to overwrite.
    }
    if let Some(input) = Inputs::new(inputs).at(out) {
        bail!(
            "--out {} is also an input of this command ({}): choose another output path",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

/// A command's input files as the file system resolves them (links and
/// `..` followed), each with the path it was given as.
struct Inputs<'a>(Vec<(PathBuf, &'a Path)>);

impl<'a> Inputs<'a> {
    fn new(inputs: impl IntoIterator<Item = &'a Path>) -> Self {
        Self(
            inputs
                .into_iter()
                .filter_map(|p| std::fs::canonicalize(p).ok().map(|real| (real, p)))
                .collect(),
        )
    }

    /// The input that `path` is, if any; a path not there yet is none.
    fn at(&self, path: &Path) -> Option<&'a Path> {
        let real = std::fs::canonicalize(path).ok()?;
        self.0.iter().find(|(r, _)| *r == real).map(|(_, p)| *p)
    }
}

/// Whether `a` and `b` name the same folder (`b` exists).
pub(crate) fn same_folder(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}
