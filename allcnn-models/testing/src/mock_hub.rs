//! A minimal Hugging Face Hub on 127.0.0.1 for tests, and a pre-filled
//! cache: no network needed.
//!
//! [`MockHub`] answers `HEAD` and `GET /{owner}/{repo}/resolve/{rev}/{file}`
//! with the headers hf-hub 1.0 reads (`ETag`, `X-Repo-Commit`,
//! `Content-Length`) and `Connection: close`, and 404 for anything else. It
//! stops when dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The commit every mock repository is at (its `main`).
pub const MOCK_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A running mock Hub.
pub struct MockHub {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

/// FNV-1a, as a stand-in ETag (the Hub uses a git or sha256 hash).
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl MockHub {
    /// Serves `files`: `("owner/repo", "path/in/repo", bytes)`, at revisions
    /// `main` and [`MOCK_COMMIT`].
    pub fn start(files: Vec<(&str, &str, Vec<u8>)>) -> Self {
        let files: BTreeMap<(String, String), Vec<u8>> = files
            .into_iter()
            .map(|(repo, file, bytes)| ((repo.to_string(), file.to_string()), bytes))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, requests) = (stop.clone(), requests.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = serve(stream, &files, &requests);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for hf-hub's endpoint setting or `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests so far, as `"METHOD /path"`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("request log").clone()
    }

    /// Stops serving; the port refuses connections afterwards.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    mut stream: TcpStream,
    files: &BTreeMap<(String, String), Vec<u8>>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    log.lock()
        .expect("request log")
        .push(format!("{method} {path}"));
    // /{owner}/{repo}/resolve/{revision}/{file...}
    let target = path.strip_prefix('/').and_then(|p| {
        let mut parts = p.splitn(5, '/');
        let (owner, repo, resolve, rev, file) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let repo_id = format!("{owner}/{repo}");
        let known = resolve == "resolve"
            && (rev == "main" || rev == MOCK_COMMIT)
            && files.keys().any(|(r, _)| *r == repo_id);
        known.then_some((repo_id, file.to_string()))
    });
    // A missing file of a known repository and revision: the real Hub
    // still names the commit (hf-hub then records the miss in the cache).
    let known_repo = target.is_some();
    let found = target
        .and_then(|key| files.get(&key))
        .filter(|_| method == "HEAD" || method == "GET");
    let response = match found {
        Some(bytes) => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nETag: \"{}\"\r\nX-Repo-Commit: {MOCK_COMMIT}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                etag(bytes),
                bytes.len()
            )
            .into_bytes();
            if method == "GET" {
                r.extend_from_slice(bytes);
            }
            r
        }
        None => {
            let body = r#"{"error":"Entry not found"}"#;
            let mut r = format!(
                "HTTP/1.1 404 Not Found\r\nX-Error-Code: {}\r\n{}\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                if known_repo {
                    "EntryNotFound"
                } else {
                    "RepoNotFound"
                },
                if known_repo {
                    format!("X-Repo-Commit: {MOCK_COMMIT}\r\n")
                } else {
                    String::new()
                },
                body.len()
            )
            .into_bytes();
            if method == "GET" {
                r.extend_from_slice(body.as_bytes());
            }
            r
        }
    };
    stream.write_all(&response)?;
    stream.flush()
}

/// Puts `bytes` into a Hugging Face cache at `cache_dir` as
/// `models--OWNER--REPO/snapshots/<commit>/<file>` (a regular file) with
/// `refs/<revision>` pointing at `commit`, as a download would leave it.
/// Returns the snapshot path.
pub fn prefill_cache(
    cache_dir: &Path,
    repo_id: &str,
    revision: &str,
    commit: &str,
    file: &str,
    bytes: &[u8],
) -> PathBuf {
    let folder = cache_dir.join(format!("models--{}", repo_id.replace('/', "--")));
    let refs = folder.join("refs").join(revision);
    std::fs::create_dir_all(refs.parent().expect("refs folder")).expect("create refs");
    std::fs::write(&refs, commit).expect("write ref");
    let snap = folder.join("snapshots").join(commit).join(file);
    std::fs::create_dir_all(snap.parent().expect("snapshot folder")).expect("create snapshot");
    std::fs::write(&snap, bytes).expect("write snapshot");
    snap
}
