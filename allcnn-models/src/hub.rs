//! Weights on the Hugging Face Hub: `hf://OWNER/REPO[/FILE][@REVISION]`
//! references, downloaded with [`hf_hub`] into the standard Hugging Face
//! cache and reused from it offline.
//!
//! - [`HubRef`] parses and prints a reference. The file defaults to
//!   [`DEFAULT_FILE`] (`model.safetensors`), the revision to
//!   [`DEFAULT_REVISION`] (`main`); a revision may be a branch, a tag or a
//!   40-hex commit.
//! - [`HubOptions`] says where the cache is (default, as hf-hub resolves
//!   it: `HF_HUB_CACHE`, then `HUGGINGFACE_HUB_CACHE`, then `$HF_HOME/hub`,
//!   then `~/.cache/huggingface/hub`), which server to ask (default:
//!   `HF_ENDPOINT`, else huggingface.co) and whether to stay offline.
//! - [`resolve`] returns the local path: from the cache when it is there
//!   (no network request at all), else downloaded into the cache. Offline
//!   mode ([`HubOptions::offline`], or [`OFFLINE_ENV`] / [`HF_OFFLINE_ENV`]
//!   set to `1`) never touches the network and fails with
//!   [`HubError::NotCached`] when the file is not cached.
//!
//! ```no_run
//! use allcnn_models::hub::{resolve, HubOptions, HubRef};
//! use allcnn_models::WeightsFile;
//! use candle_core::Device;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let reference: HubRef = "hf://someone/all-cnn-c-cifar10".parse()?;
//! let path = resolve(&reference, &HubOptions::default())?;
//! let weights = WeightsFile::load(&path, &Device::Cpu)?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hf_hub::HFError;

/// The prefix that marks a Hub reference.
pub const HUB_SCHEME: &str = "hf://";
/// The file a reference without one names.
pub const DEFAULT_FILE: &str = "model.safetensors";
/// The revision a reference without one names.
pub const DEFAULT_REVISION: &str = "main";
/// Environment variable: `1` (or `true`, `yes`, `on`) forces offline mode.
pub const OFFLINE_ENV: &str = "ALLCNN_OFFLINE";
/// The Hugging Face convention for the same switch (hf-hub 1.0 itself
/// ignores it; this module honours it).
pub const HF_OFFLINE_ENV: &str = "HF_HUB_OFFLINE";
/// The reference syntax, for messages.
pub const SYNTAX: &str = "hf://OWNER/REPO[/FILE][@REVISION]";

/// A file in a Hub model repository at a revision:
/// `hf://OWNER/REPO[/FILE][@REVISION]`.
///
/// ```
/// use allcnn_models::hub::HubRef;
///
/// let r: HubRef = "hf://someone/all-cnn-c@v1".parse().unwrap();
/// assert_eq!((r.owner.as_str(), r.repo.as_str()), ("someone", "all-cnn-c"));
/// assert_eq!((r.file.as_str(), r.revision.as_str()), ("model.safetensors", "v1"));
/// assert_eq!(r.to_string(), "hf://someone/all-cnn-c@v1");
/// assert!("hf://no-owner".parse::<HubRef>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubRef {
    /// The user or organisation.
    pub owner: String,
    /// The model repository's name.
    pub repo: String,
    /// The file's path inside the repository (may contain `/`).
    pub file: String,
    /// A branch, tag or 40-hex commit.
    pub revision: String,
}

impl HubRef {
    /// `hf://OWNER/REPO`: [`DEFAULT_FILE`] at [`DEFAULT_REVISION`].
    pub fn new(owner: impl Into<String>, repo: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            repo: repo.into(),
            file: DEFAULT_FILE.to_string(),
            revision: DEFAULT_REVISION.to_string(),
        }
    }

    /// The same reference naming `file`.
    pub fn with_file(mut self, file: impl Into<String>) -> Self {
        self.file = file.into();
        self
    }

    /// The same reference at `revision`.
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// `OWNER/REPO`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    /// The download URL on `endpoint` (e.g. `https://huggingface.co`).
    pub fn url(&self, endpoint: &str) -> String {
        format!(
            "{}/{}/{}/resolve/{}/{}",
            endpoint.trim_end_matches('/'),
            self.owner,
            self.repo,
            self.revision.replace('/', "%2F"),
            self.file
        )
    }

    /// The repository's folder in a Hugging Face cache:
    /// `<cache>/models--OWNER--REPO`.
    pub fn cache_folder(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(format!("models--{}--{}", self.owner, self.repo))
    }
}

impl fmt::Display for HubRef {
    /// The shortest form that parses back to `self` (defaults omitted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HUB_SCHEME}{}/{}", self.owner, self.repo)?;
        if self.file != DEFAULT_FILE {
            write!(f, "/{}", self.file)?;
        }
        if self.revision != DEFAULT_REVISION {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

/// Checks an owner or repository name against the Hub's rules: 1 to 96 of
/// `A-Z a-z 0-9 - _ .`, not starting or ending with `-` or `.`, without `--`
/// or `..` (the cache uses `--` as its separator).
fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if name.len() > 96 {
        return Err(format!("the {what} `{name}` is longer than 96 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "the {what} `{name}` contains {c:?} (allowed: letters, digits, `-`, `_`, `.`)"
        ));
    }
    if name.starts_with(['-', '.']) || name.ends_with(['-', '.']) {
        return Err(format!(
            "the {what} `{name}` starts or ends with `-` or `.`"
        ));
    }
    if name.contains("--") || name.contains("..") {
        return Err(format!("the {what} `{name}` contains `--` or `..`"));
    }
    Ok(())
}

impl FromStr for HubRef {
    type Err = HubError;

    fn from_str(s: &str) -> Result<Self, HubError> {
        let bad = |reason: String| HubError::BadReference {
            reference: s.to_string(),
            reason,
        };
        let rest = s
            .strip_prefix(HUB_SCHEME)
            .ok_or_else(|| bad(format!("it does not start with `{HUB_SCHEME}`")))?;
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!("it contains {c:?}")));
        }
        let (path, revision) = match rest.split_once('@') {
            Some((_, "")) => return Err(bad("the revision after `@` is empty".into())),
            Some((p, r)) => (p, r),
            None => (rest, DEFAULT_REVISION),
        };
        if revision.ends_with(".safetensors") {
            return Err(bad(format!(
                "the revision `{revision}` looks like a file: the file goes before `@`, \
                 as in hf://OWNER/REPO/FILE@REVISION"
            )));
        }
        if revision.contains('@') || revision.contains("..") || revision.starts_with('/') {
            return Err(bad(format!(
                "the revision `{revision}` is not a valid git ref"
            )));
        }
        let mut parts = path.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let repo = parts
            .next()
            .ok_or_else(|| bad("OWNER/REPO is incomplete".into()))?;
        check_name("owner", owner).map_err(bad)?;
        check_name("repository name", repo).map_err(bad)?;
        let file = match parts.next() {
            None => DEFAULT_FILE,
            Some("") => return Err(bad("the file name after `OWNER/REPO/` is empty".into())),
            Some(f) => {
                if f.contains('\\') {
                    return Err(bad(format!("the file `{f}` contains `\\`; use `/`")));
                }
                if f.split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
                {
                    return Err(bad(format!(
                        "the file `{f}` has an empty, `.` or `..` path segment"
                    )));
                }
                f
            }
        };
        Ok(Self {
            owner: owner.to_string(),
            repo: repo.to_string(),
            file: file.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// Where the cache is, which server to ask, and whether to stay offline.
/// The default reads everything from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubOptions {
    /// `Some(true)`: cache only; `Some(false)`: may download whatever the
    /// environment says; `None` (default): offline when [`OFFLINE_ENV`] or
    /// [`HF_OFFLINE_ENV`] is set to `1`/`true`/`yes`/`on`.
    pub offline: Option<bool>,
    /// The Hugging Face cache (default: hf-hub's `HF_HUB_CACHE`, then
    /// `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// The Hub's base URL (default: `HF_ENDPOINT`, else `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// How many times a failed request is retried (default 1, so a dead
    /// network fails within a second).
    pub retries: usize,
    /// Print one line to stderr when a download starts and ends.
    pub progress: bool,
    /// How long a download may go without a sign of life (no answer to
    /// its request, no bytes of the file) before it is given up with
    /// [`HubError::Stalled`] (default 60 s): a server or proxy that takes
    /// the connection and never answers does not hang the caller.
    pub stall_timeout: std::time::Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            offline: None,
            cache_dir: None,
            endpoint: None,
            retries: 1,
            progress: false,
            stall_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// Whether an environment value means "on", as `huggingface_hub` reads it.
fn env_is_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

impl HubOptions {
    /// Sets [`HubOptions::offline`]: `true` forces cache-only lookups,
    /// `false` ignores the environment switches.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = Some(offline);
        self
    }

    /// Sets [`HubOptions::cache_dir`].
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Sets [`HubOptions::endpoint`].
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Sets [`HubOptions::retries`].
    pub fn retries(mut self, n: usize) -> Self {
        self.retries = n;
        self
    }

    /// Sets [`HubOptions::progress`].
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Sets [`HubOptions::stall_timeout`].
    pub fn stall_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Why lookups are offline (`"offline mode was requested"`,
    /// `"ALLCNN_OFFLINE is set"`, ...), or `None` when they may download.
    pub fn offline_reason(&self) -> Option<String> {
        match self.offline {
            Some(true) => Some("offline mode was requested".to_string()),
            Some(false) => None,
            None => [OFFLINE_ENV, HF_OFFLINE_ENV]
                .into_iter()
                .find(|v| env_is_true(v))
                .map(|v| format!("{v} is set")),
        }
    }
}

/// Everything that can go wrong resolving a Hub reference. Every variant
/// names the reference and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The text is not a well-formed reference.
    #[error("invalid Hub reference `{reference}`: {reason}; expected {SYNTAX}")]
    BadReference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Offline, and the file is not in the cache.
    #[error(
        "{reference} is not in the Hugging Face cache at {} ({reason}); run once without --offline \
         (and with {OFFLINE_ENV} and {HF_OFFLINE_ENV} unset) to download it, or point HF_HUB_CACHE \
         or HF_HOME at a cache that holds it",
        cache_dir.display()
    )]
    NotCached {
        /// The reference.
        reference: Box<HubRef>,
        /// The cache searched.
        cache_dir: PathBuf,
        /// Why the lookup was offline.
        reason: String,
    },
    /// The Hub answered 404: no such repository, revision or file.
    #[error(
        "{reference}: repository, revision or file not found (404 at {url}); check the owner, \
         repository, file name and revision"
    )]
    NotFound {
        /// The reference.
        reference: Box<HubRef>,
        /// The URL asked.
        url: String,
    },
    /// The Hub refused access (401/403): a private or gated repository, or
    /// (unauthenticated) one that does not exist.
    #[error(
        "{reference}: the Hub refused access ({status} at {url}); the repository does not exist, \
         or it is private or gated: set HF_TOKEN (or run `hf auth login`)"
    )]
    AccessDenied {
        /// The reference.
        reference: Box<HubRef>,
        /// The HTTP status.
        status: u16,
        /// The URL asked.
        url: String,
    },
    /// The download failed (network, server or cache error).
    #[error(
        "cannot download {reference} from {endpoint} into {}: {}; check the network and \
         HF_ENDPOINT, or use a cached copy with --offline",
        cache_dir.display(),
        root_cause(error)
    )]
    Download {
        /// The reference.
        reference: Box<HubRef>,
        /// The Hub's base URL.
        endpoint: String,
        /// The cache written to.
        cache_dir: PathBuf,
        /// The underlying hf-hub error (its innermost cause is in the message).
        error: Box<HFError>,
    },
    /// The cache could not be read or written.
    #[error(
        "{reference}: cannot use the Hugging Face cache at {}: {error}; check its permissions and \
         free space, or point HF_HUB_CACHE elsewhere",
        cache_dir.display()
    )]
    Cache {
        /// The reference.
        reference: Box<HubRef>,
        /// The cache.
        cache_dir: PathBuf,
        /// The file-system error.
        error: std::io::Error,
    },
    /// The server stopped answering: no response to a request, or no
    /// bytes of the file, for [`HubOptions::stall_timeout`].
    #[error(
        "cannot download {reference} from {endpoint}: no answer for {} s (the server took the \
         connection but sent nothing); check the network, a proxy and HF_ENDPOINT, or use a \
         cached copy with --offline",
        timeout.as_secs_f64()
    )]
    Stalled {
        /// The reference.
        reference: Box<HubRef>,
        /// The Hub's base URL.
        endpoint: String,
        /// The silence that was given up on.
        timeout: std::time::Duration,
    },
    /// The Hub client could not be set up (e.g. an invalid endpoint URL).
    #[error(
        "cannot set up the Hugging Face Hub client (endpoint {endpoint:?}): {}",
        root_cause(error)
    )]
    Client {
        /// The endpoint asked for (`HF_ENDPOINT` or the default when empty).
        endpoint: String,
        /// The underlying hf-hub error.
        error: Box<HFError>,
    },
}

/// The innermost error of a chain: hf-hub's and reqwest's messages repeat
/// the URL at every level, the root says what actually failed
/// (`Connection refused`, a DNS failure, an HTTP status).
fn root_cause(error: &HFError) -> String {
    let mut e: &dyn std::error::Error = error;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

/// The time of a download's last sign of life: any progress event (hf-hub
/// sends one after the metadata request and one per chunk of the file).
struct Activity {
    start: std::time::Instant,
    /// Milliseconds from `start` to the last event.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        let now = self.now_ms();
        self.last_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last sign of life.
    fn silence(&self) -> std::time::Duration {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_millis(self.now_ms().saturating_sub(last))
    }
}

/// Marks every event in an [`Activity`]; with `what`, also prints one line
/// when a download starts and one when it ends.
struct StderrProgress {
    what: Option<String>,
    activity: std::sync::Arc<Activity>,
}

impl hf_hub::progress::ProgressHandler for StderrProgress {
    fn on_progress(&self, event: &hf_hub::progress::ProgressEvent) {
        use hf_hub::progress::{DownloadEvent, ProgressEvent};
        self.activity.touch();
        let Some(what) = &self.what else {
            return;
        };
        match event {
            ProgressEvent::Download(DownloadEvent::Start { total_bytes, .. }) => {
                eprintln!("downloading {what} ({:.1} MB)", *total_bytes as f64 / 1e6);
            }
            ProgressEvent::Download(DownloadEvent::Complete) => {
                eprintln!("downloaded {what}");
            }
            _ => {}
        }
    }
}

/// The local path of `reference`: from the cache when it is there (no
/// network request), else downloaded into the cache, unless offline.
///
/// # Errors
/// [`HubError::NotCached`] offline when the file is not cached,
/// [`HubError::NotFound`] on a 404, [`HubError::AccessDenied`] on 401/403,
/// [`HubError::Cache`] when the cache cannot be read or written,
/// [`HubError::Download`] for network and server errors,
/// [`HubError::Client`] for an invalid endpoint.
pub fn resolve(reference: &HubRef, options: &HubOptions) -> Result<PathBuf, HubError> {
    let mut builder = hf_hub::HFClient::builder().retry_max_attempts(options.retries);
    if let Some(dir) = &options.cache_dir {
        builder = builder.cache_dir(dir);
    }
    if let Some(url) = &options.endpoint {
        builder = builder.endpoint(url);
    }
    let client_error = |error: HFError| HubError::Client {
        endpoint: options
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_default(),
        error: Box::new(error),
    };
    let client = builder.build().map_err(client_error)?;
    let cache_dir = client.cache_dir().to_path_buf();
    let endpoint = client.endpoint().to_string();
    let repo = client.model(&reference.owner, &reference.repo);

    let failed = |e: HFError| -> HubError {
        let url = reference.url(&endpoint);
        let status = match &e {
            HFError::AuthRequired { .. } => Some(401),
            HFError::Forbidden { .. } => Some(403),
            HFError::Http { context } => Some(context.status.as_u16()),
            HFError::RepoNotFound { .. }
            | HFError::RevisionNotFound { .. }
            | HFError::EntryNotFound { .. } => Some(404),
            _ => None,
        };
        match (e, status) {
            (HFError::Io(error), _) => HubError::Cache {
                reference: Box::new(reference.clone()),
                cache_dir: cache_dir.clone(),
                error,
            },
            (_, Some(404)) => HubError::NotFound {
                reference: Box::new(reference.clone()),
                url,
            },
            (_, Some(s @ (401 | 403))) => HubError::AccessDenied {
                reference: Box::new(reference.clone()),
                status: s,
                url,
            },
            (e, _) => HubError::Download {
                reference: Box::new(reference.clone()),
                endpoint: endpoint.clone(),
                cache_dir: cache_dir.clone(),
                error: Box::new(e),
            },
        }
    };

    let activity = std::sync::Arc::new(Activity::new());
    let lookup = async {
        // The cache first: no request at all when the file is there.
        let cached = repo
            .download_file()
            .filename(&reference.file)
            .revision(&reference.revision)
            .local_files_only(true)
            .send()
            .await;
        match (cached, options.offline_reason()) {
            (Ok(path), _) => return Ok(path),
            // A miss, or a "does not exist" marker left by an earlier 404:
            // offline that is a miss; online, ask the Hub again.
            (
                Err(HFError::LocalEntryNotFound { .. } | HFError::EntryNotFound { .. }),
                Some(reason),
            ) => {
                return Err(HubError::NotCached {
                    reference: Box::new(reference.clone()),
                    cache_dir: cache_dir.clone(),
                    reason,
                })
            }
            (Err(HFError::LocalEntryNotFound { .. } | HFError::EntryNotFound { .. }), None) => {}
            (Err(e), _) => return Err(failed(e)),
        }
        let progress = hf_hub::progress::Progress::new(StderrProgress {
            what: options
                .progress
                .then(|| format!("{reference} from {endpoint}")),
            activity: activity.clone(),
        });
        // The network's silence counts from here.
        activity.touch();
        repo.download_file()
            .filename(&reference.file)
            .revision(&reference.revision)
            .progress(progress)
            .send()
            .await
            .map_err(failed)
    };
    match run_watched(lookup, &activity, options.stall_timeout) {
        Ok(Some(result)) => result,
        Ok(None) => Err(HubError::Stalled {
            reference: Box::new(reference.clone()),
            endpoint,
            timeout: options.stall_timeout,
        }),
        Err(e) => Err(client_error(HFError::Other(format!(
            "cannot start the async runtime for the download: {e}"
        )))),
    }
}

/// Runs `future` to its end on a runtime of its own, unless `activity`
/// stays silent for `stall` first (then `None`; the future is dropped,
/// which cancels its requests). The runtime lives on a scoped thread, so
/// a caller inside another tokio runtime works too (tokio panics when a
/// runtime is started or dropped within one).
fn run_watched<F>(
    future: F,
    activity: &Activity,
    stall: std::time::Duration,
) -> std::io::Result<Option<F::Output>>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    use std::task::Poll;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(async {
                    let mut future = std::pin::pin!(future);
                    let tick = stall.min(std::time::Duration::from_millis(250));
                    let mut ticks = tokio::time::interval(tick);
                    std::future::poll_fn(|cx| {
                        if let Poll::Ready(out) = future.as_mut().poll(cx) {
                            return Poll::Ready(Some(out));
                        }
                        while ticks.poll_tick(cx).is_ready() {
                            if activity.silence() >= stall {
                                return Poll::Ready(None);
                            }
                        }
                        Poll::Pending
                    })
                    .await
                }))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Parses `reference` ([`SYNTAX`]) and [`resolve`]s it.
///
/// # Errors
/// [`HubError::BadReference`], and those of [`resolve`].
pub fn fetch(reference: &str, options: &HubOptions) -> Result<PathBuf, HubError> {
    resolve(&reference.parse()?, options)
}
