//! Downloading the official CIFAR binary archives: progress bar, resume of
//! an interrupted download (HTTP Range), MD5 check, and an extraction that
//! never leaves a half-extracted dataset looking complete (it extracts into
//! a temporary folder and renames it into place only once every data file is
//! there).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use serde::Serialize;

use crate::cifar::{CifarKind, Split, CIFAR_PIXELS};
use crate::DataError;

/// The official CIFAR-10 binary archive (University of Toronto).
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its published MD5.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The official CIFAR-100 binary archive.
pub const CIFAR100_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz";
/// Its published MD5.
pub const CIFAR100_MD5: &str = "03b5dce01913d631647c71ecec9e9cb8";

/// The official URL and MD5 of a dataset's binary archive.
pub const fn official_source(kind: CifarKind) -> (&'static str, &'static str) {
    match kind {
        CifarKind::Cifar10 => (CIFAR10_URL, CIFAR10_MD5),
        CifarKind::Cifar100 => (CIFAR100_URL, CIFAR100_MD5),
    }
}

/// Options of [`download_cifar`]. `Default` gives the official URL and MD5,
/// no progress bar, archive kept.
#[derive(Debug, Clone, Default)]
pub struct DownloadOptions {
    /// Download from this URL instead of the official one (a mirror).
    pub url: Option<String>,
    /// Expect this MD5 instead of the published one (for a mirror that
    /// repackaged the archive, and for tests).
    pub md5: Option<String>,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
    /// Delete the `.tar.gz` after a successful extraction.
    pub remove_archive: bool,
    /// Download and extract again even when the dataset is already there.
    pub force: bool,
    /// Connection and response-header timeout (default 60 s).
    pub timeout: Option<Duration>,
    /// The longest the body of one request may take to arrive (default
    /// [`DEFAULT_BODY_TIMEOUT`]); a stalled or trickling server then ends
    /// the call, and running it again resumes the partial download.
    pub body_timeout: Option<Duration>,
    /// The longest the server may send nothing while the body is read
    /// (default [`DEFAULT_IDLE_TIMEOUT`]): a stalled connection ends the
    /// call with the partial download kept, to be resumed, long before
    /// [`Self::body_timeout`].
    pub idle_timeout: Option<Duration>,
    /// Refuse, and stop reading, a download larger than this (default
    /// [`DEFAULT_MAX_BYTES`]): a server cannot fill the disk.
    pub max_bytes: Option<u64>,
}

/// The default [`DownloadOptions::body_timeout`]: 30 minutes.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The default [`DownloadOptions::idle_timeout`]: 2 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The default [`DownloadOptions::max_bytes`]: 512 MiB (the CIFAR archives
/// are about 170 MB).
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

/// What [`download_cifar`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadOutcome {
    /// The extracted dataset folder, ready for [`crate::CifarDataset::load`].
    pub dataset_dir: PathBuf,
    /// The archive, where it is on disk when the call returns: `None` after
    /// [`DownloadOptions::remove_archive`], or for a dataset found complete
    /// whose archive had been removed before.
    pub archive: Option<PathBuf>,
    /// Whether the dataset was already complete (nothing was done).
    pub already_present: bool,
    /// Bytes fetched over the network by this call.
    pub downloaded_bytes: u64,
    /// Whether the download resumed a partial download (`PART_SUFFIX`).
    pub resumed: bool,
}

/// Fetches, checks and extracts the CIFAR-10 or CIFAR-100 binary archive
/// into `dir` (created if needed, and removed again when the call fails
/// before anything was written into it), giving `dir/cifar-10-batches-bin` or
/// `dir/cifar-100-binary`. Calling it again is cheap: a complete dataset is
/// left as it is, a partial download (`<archive>.allcnn-part`) is resumed.
/// The archive is stored under its official name ([`archive_name`]) whatever
/// the URL; a file of that name that is not the expected archive is left
/// alone and reported ([`DataError::ForeignFile`]).
///
/// ```no_run
/// use allcnn_data::download::{download_cifar, DownloadOptions};
/// use allcnn_data::CifarKind;
/// let out = download_cifar(
///     CifarKind::Cifar10,
///     std::path::Path::new("data"),
///     &DownloadOptions { progress: true, ..Default::default() },
/// )?;
/// println!("CIFAR-10 is in {}", out.dataset_dir.display());
/// # Ok::<(), allcnn_data::DataError>(())
/// ```
///
/// # Errors
/// [`DataError::Http`] (network, HTTP status), [`DataError::Truncated`]
/// (connection closed early: run again to resume), [`DataError::Md5Mismatch`]
/// (the corrupt file is deleted: run again), [`DataError::Archive`]
/// (extraction failed or a member is missing), [`DataError::Io`].
pub fn download_cifar(
    kind: CifarKind,
    dir: &Path,
    opts: &DownloadOptions,
) -> Result<DownloadOutcome, DataError> {
    let (official_url, official_md5) = official_source(kind);
    let url = opts.url.as_deref().unwrap_or(official_url);
    let md5 = opts
        .md5
        .as_deref()
        .unwrap_or(official_md5)
        .to_ascii_lowercase();
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DataError::InvalidConfig {
            name: "md5",
            value: md5,
            reason: "an MD5 is 32 hexadecimal digits (e.g. the output of `md5sum`)".into(),
        });
    }
    // The folders this call creates are removed again if it fails before
    // anything lands in them (a partial download stays, to be resumed).
    let created = first_missing_ancestor(dir);
    // A file where the folder or one of its parents should be ("File
    // exists" said nothing of which).
    if let Some(file) = dir.ancestors().find(|a| a.is_file()) {
        return Err(DataError::InvalidConfig {
            name: "dir",
            value: dir.display().to_string(),
            reason: if file == dir {
                "it is a file, not a folder: give a folder to download into".into()
            } else {
                format!(
                    "{} is a file, not a folder: give a folder to download into",
                    file.display()
                )
            },
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io("cannot create", dir, e))?;
    let result = download_into(kind, dir, opts, url, &md5);
    if result.is_err() {
        // An empty partial download (the connection failed before the
        // first byte) has nothing to resume.
        let part = dir.join(format!("{}{PART_SUFFIX}", archive_name(kind)));
        if std::fs::metadata(&part).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = std::fs::remove_file(&part);
        }
        if let Some(top) = created {
            remove_empty_folders(dir, &top);
        }
    }
    result
}

/// Up to `n` bytes from the start of `path` (fewer, or none, when it is
/// shorter or unreadable).
fn first_bytes(path: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut head = Vec::with_capacity(n);
    if let Ok(f) = File::open(path) {
        let _ = f.take(n as u64).read_to_end(&mut head);
    }
    head
}

/// The outermost folder of `dir` that does not exist yet (`dir` itself, or
/// one of its ancestors), `None` when `dir` exists.
fn first_missing_ancestor(dir: &Path) -> Option<PathBuf> {
    let mut missing = None;
    for a in dir.ancestors() {
        if a.as_os_str().is_empty() || a.exists() {
            break;
        }
        missing = Some(a.to_path_buf());
    }
    missing
}

/// Removes `dir` and its ancestors up to `top` while they are empty.
fn remove_empty_folders(dir: &Path, top: &Path) {
    for a in dir.ancestors() {
        // remove_dir refuses a folder that holds anything.
        if std::fs::remove_dir(a).is_err() || a == top {
            break;
        }
    }
}

/// [`download_cifar`] once `dir` exists.
fn download_into(
    kind: CifarKind,
    dir: &Path,
    opts: &DownloadOptions,
    url: &str,
    md5: &str,
) -> Result<DownloadOutcome, DataError> {
    let target = dir.join(kind.folder());
    // The archive and partial download have names of our own, whatever the
    // URL ends with, so no file of the user's is ever overwritten or deleted.
    let archive_name = archive_name(kind);
    let archive = dir.join(archive_name);
    let mut outcome = DownloadOutcome {
        dataset_dir: target.clone(),
        archive: archive.is_file().then(|| archive.clone()),
        already_present: false,
        downloaded_bytes: 0,
        resumed: false,
    };

    if !opts.force && missing_member(&target, kind).is_none() {
        outcome.already_present = true;
        return Ok(outcome);
    }

    // Reuse a complete archive from an earlier run; leave any other file of
    // that name alone.
    let mut have_archive = false;
    if archive.exists() {
        let found = if archive.is_file() {
            file_md5(&archive)?
        } else {
            "(not a regular file)".into()
        };
        if found != *md5 {
            // Not ours to delete, `force` or not: it may be the user's.
            return Err(DataError::ForeignFile {
                path: archive,
                reason: format!(
                    "it is not the expected archive (MD5 {found}, expected {md5}), and it is \
                     not deleted (not even with --force: allcnn did not make it): move it away \
                     and run the download again"
                ),
            });
        }
        have_archive = !opts.force;
    }
    if !have_archive {
        let part = dir.join(format!("{archive_name}{PART_SUFFIX}"));
        if opts.force {
            let _ = std::fs::remove_file(&part);
        }
        let (got, resumed) = fetch_resumable(url, &part, opts)?;
        outcome.downloaded_bytes = got;
        outcome.resumed = resumed;
        let found = file_md5(&part)?;
        if found != *md5 {
            // Not an archive at all (an error or login page served with
            // status 200): say so, rather than point at --md5.
            let head = first_bytes(&part, 64);
            remove_file(&part)?;
            if !head.starts_with(&[0x1f, 0x8b]) {
                let shown: String = String::from_utf8_lossy(&head)
                    .chars()
                    .take(40)
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                return Err(DataError::Http {
                    url: url.to_string(),
                    reason: format!(
                        "the server sent {got} bytes that are not a gzip archive (they begin `{}`): a web page instead of the file? The download was deleted",
                        shown.trim()
                    ),
                });
            }
            return Err(DataError::Md5Mismatch {
                path: part,
                expected: md5.to_string(),
                found,
            });
        }
        std::fs::rename(&part, &archive).map_err(|e| DataError::io("cannot rename", &part, e))?;
    }

    if let Err(e) = extract(&archive, dir, kind) {
        // An archive this call downloaded whose contents do not extract is
        // of no use (its MD5 was the one given, a mirror's): without
        // deleting it, every later call would try it again and fail the
        // same way. One that failed for this machine's reasons (a full
        // disk: an I/O error) is kept.
        let downloaded = !have_archive;
        if downloaded && matches!(e, DataError::Archive { .. }) {
            let _ = std::fs::remove_file(&archive);
        }
        return Err(match e {
            DataError::Archive { path, reason } => DataError::Archive {
                path,
                reason: if downloaded {
                    format!("{reason}; the download was deleted: check the URL and its MD5, and run the download again")
                } else {
                    format!("{reason}; this archive was already there, not downloaded now: move it away, or pass --force to download it again")
                },
            },
            e => e,
        });
    }
    if opts.remove_archive {
        remove_file(&archive)?;
    }
    outcome.archive = archive.is_file().then_some(archive);
    Ok(outcome)
}

/// The suffix of a partial download (`cifar-10-binary.tar.gz.allcnn-part`):
/// only files with it are ever resumed or deleted.
pub const PART_SUFFIX: &str = ".allcnn-part";

/// The file name the archive of `kind` is stored under (the official one).
pub const fn archive_name(kind: CifarKind) -> &'static str {
    match kind {
        CifarKind::Cifar10 => "cifar-10-binary.tar.gz",
        CifarKind::Cifar100 => "cifar-100-binary.tar.gz",
    }
}

fn remove_file(p: &Path) -> Result<(), DataError> {
    std::fs::remove_file(p).map_err(|e| DataError::io("cannot remove", p, e))
}

/// The largest size a member of the official archive may have: the data
/// files at most the official record count, the label files and readme
/// small; `None` for a member the archive should not hold.
fn member_limit(kind: CifarKind, file: &str) -> Option<u64> {
    let records = |split| match (kind, split) {
        (CifarKind::Cifar10, _) => 10_000u64,
        (CifarKind::Cifar100, Split::Train) => 50_000,
        (CifarKind::Cifar100, Split::Test) => 10_000,
    };
    for split in [Split::Train, Split::Test] {
        if kind.files(split).contains(&file) {
            return Some(records(split) * kind.record_len() as u64);
        }
    }
    (kind.meta_files().contains(&file) || file == "readme.html").then_some(1 << 20)
}

/// The first data file of `dir` (an extracted dataset folder) that is
/// missing or not a whole number of records; `None` when complete.
fn missing_member(dir: &Path, kind: CifarKind) -> Option<String> {
    for split in [Split::Train, Split::Test] {
        for f in kind.files(split) {
            match std::fs::metadata(dir.join(f)) {
                Ok(m) if m.is_file() && m.len() > 0 && m.len() % kind.record_len() as u64 == 0 => {}
                Ok(m) => {
                    return Some(format!(
                        "{f} has {} bytes, not a whole number of {}-byte records",
                        m.len(),
                        kind.record_len()
                    ))
                }
                Err(_) => return Some(format!("{f} is missing")),
            }
        }
    }
    debug_assert!(kind.record_len() > CIFAR_PIXELS);
    None
}

/// MD5 of a file, lowercase hex.
///
/// # Errors
/// [`DataError::Io`] when it cannot be read.
pub fn file_md5(path: &Path) -> Result<String, DataError> {
    let f = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| DataError::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Parses `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL`).
fn content_range(v: &str) -> (Option<u64>, Option<u64>) {
    let v = v.trim().strip_prefix("bytes").unwrap_or(v).trim();
    let (range, total) = v.split_once('/').unwrap_or((v, "*"));
    let start = range
        .split_once('-')
        .and_then(|(s, _)| s.trim().parse().ok());
    (start, total.trim().parse().ok())
}

/// Redirects followed at most.
const MAX_REDIRECTS: u32 = 10;

/// Whether `url` is an http:// or https:// URL.
fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// A redirect's `Location` against the URL that sent it: absolute as is,
/// `/path` on the same host; `None` for an empty one.
fn resolve_location(base: &str, location: &str) -> Option<String> {
    if location.is_empty() {
        return None;
    }
    if location.contains("://") {
        return Some(location.to_string());
    }
    let scheme_end = base.find("://")? + 3;
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    if location.starts_with('/') {
        Some(format!("{}{location}", &base[..host_end]))
    } else {
        let dir_end = base
            .rfind('/')
            .filter(|&i| i >= host_end)
            .unwrap_or(host_end);
        Some(format!("{}/{location}", &base[..dir_end]))
    }
}

/// Downloads `url` into `part`, resuming it when it already holds bytes.
/// Returns (bytes fetched, resumed).
fn fetch_resumable(
    url: &str,
    part: &Path,
    opts: &DownloadOptions,
) -> Result<(u64, bool), DataError> {
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(60));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Redirects are followed below, where their target can be checked.
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_connect(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_recv_body(Some(opts.body_timeout.unwrap_or(DEFAULT_BODY_TIMEOUT)))
        .build()
        .into();
    let http = |reason: String| DataError::Http {
        url: url.to_string(),
        reason,
    };
    if !is_http(url) {
        let name = part
            .file_name()
            .map(|n| n.to_string_lossy().replace(PART_SUFFIX, ""))
            .unwrap_or_default();
        let dir = part.parent().unwrap_or(Path::new("."));
        // Not a network failure: no "check the network".
        return Err(DataError::InvalidConfig {
            name: "url",
            value: url.to_string(),
            reason: format!(
                "only http:// and https:// URLs can be downloaded; for an archive already on this machine, copy it to {} (it is then checked and extracted)",
                dir.join(name).display()
            ),
        });
    }
    let mut offset = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut restarted = false;
    let mut current = url.to_string();
    let mut redirects = 0;
    loop {
        let mut req = agent.get(&current);
        if offset > 0 {
            req = req.header("Range", &format!("bytes={offset}-"));
        }
        let resp = req.call().map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .trim()
                .to_string();
            let next = resolve_location(&current, &location);
            match next {
                Some(n) if is_http(&n) && redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    current = n;
                    continue;
                }
                Some(n) if is_http(&n) => {
                    return Err(http(format!(
                        "more than {MAX_REDIRECTS} redirects (the last to {n})"
                    )))
                }
                _ => {
                    return Err(http(format!(
                        "the server redirected to `{location}`, which is not an http:// or https:// URL; refused"
                    )))
                }
            }
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_length: Option<u64> =
            header("content-length").and_then(|v| v.trim().parse().ok());
        let (append, total) = match status {
            206 if offset > 0 => {
                let (start, total) = header("content-range")
                    .as_deref()
                    .map(content_range)
                    .unwrap_or((None, None));
                if start != Some(offset) {
                    let at = match start {
                        Some(b) => format!("at byte {b}"),
                        None => "without saying where (no valid Content-Range)".to_string(),
                    };
                    return Err(http(format!(
                        "asked to resume at byte {offset}, the server answered {at}; delete {} and retry",
                        part.display()
                    )));
                }
                (true, total.or(content_length.map(|l| l + offset)))
            }
            200 => {
                if offset > 0 {
                    log::info!("{url}: the server does not resume downloads, starting again");
                }
                (false, content_length)
            }
            416 if offset > 0 && !restarted => {
                // The range starts at or past the end: the part may be complete.
                let (_, total) = header("content-range")
                    .as_deref()
                    .map(content_range)
                    .unwrap_or((None, None));
                if total == Some(offset) {
                    return Ok((0, true));
                }
                remove_file(part)?;
                offset = 0;
                restarted = true;
                continue;
            }
            code => return Err(http(format!("HTTP status {code}"))),
        };
        let resumed = append;
        let start = if append { offset } else { 0 };
        let max_bytes = opts.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        // Not a network failure: the limit is the caller's.
        let too_big = |size: u64| DataError::InvalidConfig {
            name: "max_bytes",
            value: max_bytes.to_string(),
            reason: format!(
                "{url} is {size} bytes or more, over this limit: raise it (--max-bytes) if that \
                 file is the one expected"
            ),
        };
        if let Some(t) = total.filter(|&t| t > max_bytes) {
            return Err(too_big(t));
        }
        let mut file = if append {
            OpenOptions::new().append(true).open(part)
        } else {
            File::create(part)
        }
        .map_err(|e| DataError::io("cannot write", part, e))?;
        let pb = if opts.progress {
            let pb = indicatif::ProgressBar::new(total.unwrap_or(0));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb.set_message(
                part.file_name()
                    .map(|s| s.to_string_lossy().replace(PART_SUFFIX, ""))
                    .unwrap_or_default(),
            );
            pb.set_position(start);
            pb
        } else {
            indicatif::ProgressBar::hidden()
        };
        // The body is read on a thread of its own, so that a server that
        // stops sending is noticed here (ureq has no timeout between two
        // reads); on a stall that thread is left to the body timeout.
        let chunks = read_in_background(resp.into_body().into_reader());
        let idle = opts.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let mut got = 0u64;
        let mut stalled = false;
        let read_error = loop {
            match chunks.recv_timeout(idle) {
                Ok(Ok(chunk)) if chunk.is_empty() => break None,
                Ok(Ok(chunk)) => {
                    let n = chunk.len() as u64;
                    if start + got + n > max_bytes {
                        drop(file);
                        remove_file(part)?;
                        return Err(too_big(start + got + n));
                    }
                    file.write_all(&chunk)
                        .map_err(|e| DataError::io("cannot write", part, e))?;
                    got += n;
                    pb.inc(n);
                }
                Ok(Err(e)) => break Some(e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    stalled = true;
                    break None;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    break Some(std::io::Error::other(
                        "the body's reader ended without a word",
                    ))
                }
            }
        };
        file.flush()
            .map_err(|e| DataError::io("cannot write", part, e))?;
        pb.finish_and_clear();
        let have = start + got;
        if stalled {
            return Err(http(format!(
                "the server sent nothing for {} s after {have} bytes (a stalled connection); the partial file {} is kept, run again to resume",
                idle.as_secs_f64(),
                part.display()
            )));
        }
        match total {
            Some(t) if have < t => {
                return Err(DataError::Truncated {
                    url: url.to_string(),
                    received: have,
                    expected: t,
                    part: part.to_path_buf(),
                })
            }
            _ => {}
        }
        if let Some(e) = read_error {
            return Err(http(format!(
                "connection failed after {have} bytes ({e}); the partial file {} is kept, run again to resume",
                part.display()
            )));
        }
        return Ok((got, resumed));
    }
}

/// Reads `reader` to its end on a thread of its own, sending its chunks
/// (an empty one at the end) or its error.
fn read_in_background(
    mut reader: impl Read + Send + 'static,
) -> std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; 1 << 16];
        match reader.read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Ok(buf)).is_err() || n == 0 {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    });
    rx
}

/// `e` and its chain of causes (the tar crate's "failed to unpack ..."
/// says why only in its source).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Extracts `archive` (tar.gz) into `dir` through a temporary folder; the
/// dataset folder appears only when complete.
fn extract(archive: &Path, dir: &Path, kind: CifarKind) -> Result<(), DataError> {
    let target = dir.join(kind.folder());
    let tmp = dir.join(format!(".{}.extracting", kind.folder()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| DataError::io("cannot remove", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| DataError::io("cannot create", &tmp, e))?;
    let arch_err = |reason: String| DataError::Archive {
        path: archive.to_path_buf(),
        reason,
    };
    let result = (|| -> Result<(), DataError> {
        let f = File::open(archive).map_err(|e| DataError::io("cannot open", archive, e))?;
        let gz = flate2::read::GzDecoder::new(BufReader::with_capacity(1 << 20, f));
        let mut ar = tar::Archive::new(gz);
        let entries = ar.entries().map_err(|e| arch_err(with_causes(&e)))?;
        // Only the expected members, as plain files we create ourselves
        // (default permissions, nothing followed): a symlink, a device, an
        // odd mode or an unexpected member never reaches the disk.
        let out = tmp.join(kind.folder());
        std::fs::create_dir_all(&out).map_err(|e| DataError::io("cannot create", &out, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| arch_err(with_causes(&e)))?;
            let path = entry
                .path()
                .map(|p| p.into_owned())
                .map_err(|e| arch_err(format!("a member with an unreadable name: {e}")))?;
            let name = path.display().to_string();
            let parts: Vec<&str> = path
                .components()
                .map(|c| match c {
                    std::path::Component::Normal(s) => s.to_str().unwrap_or("\u{fffd}"),
                    _ => "\u{fffd}",
                })
                .collect();
            let kind_of = entry.header().entry_type();
            let file = match parts.as_slice() {
                [top] if *top == kind.folder() && kind_of.is_dir() => continue,
                [top, file] if *top == kind.folder() => *file,
                _ => {
                    log::warn!(
                        "{}: skipping member {name} (not part of {})",
                        archive.display(),
                        kind.name()
                    );
                    continue;
                }
            };
            let Some(limit) = member_limit(kind, file) else {
                log::warn!(
                    "{}: skipping member {name} (not part of {})",
                    archive.display(),
                    kind.name()
                );
                continue;
            };
            if !kind_of.is_file() {
                return Err(arch_err(format!(
                    "member {name} is a {kind_of:?}, not a regular file"
                )));
            }
            let size = entry
                .header()
                .size()
                .map_err(|e| arch_err(format!("member {name}: {e}")))?;
            if size > limit {
                return Err(arch_err(format!(
                    "member {name} has {size} bytes, more than the {limit} {} allows",
                    kind.name()
                )));
            }
            let dest = out.join(file);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dest)
                .map_err(|e| DataError::io("cannot create", &dest, e))?;
            // Read errors are the archive's; write errors (a full disk) are
            // this machine's, and must not get a good archive deleted.
            let mut copied = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            let mut member = (&mut entry).take(limit + 1);
            loop {
                let n = match member.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(arch_err(format!("member {name}: {}", with_causes(&e)))),
                };
                f.write_all(&buf[..n])
                    .map_err(|e| DataError::io("cannot write", &dest, e))?;
                copied += n as u64;
            }
            if copied != size {
                return Err(arch_err(format!(
                    "member {name} holds {copied} bytes, its header says {size}"
                )));
            }
        }
        if let Some(what) = missing_member(&tmp.join(kind.folder()), kind) {
            return Err(arch_err(format!(
                "it does not hold a complete {} ({}/{what})",
                kind.name(),
                kind.folder()
            )));
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if target.exists() {
        // Complete only under --force (a complete folder is kept otherwise).
        let what = match missing_member(&target, kind) {
            None => "the dataset folder (--force)",
            Some(_) => "an incomplete dataset folder",
        };
        log::warn!("{}: replacing {what}", target.display());
        std::fs::remove_dir_all(&target).map_err(|e| DataError::io("cannot remove", &target, e))?;
    }
    let from = tmp.join(kind.folder());
    std::fs::rename(&from, &target).map_err(|e| DataError::io("cannot rename", &from, e))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
