//! Download against a server the test starts on 127.0.0.1: happy path,
//! truncated then resumed, corrupted, no Range support, bad archives.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allcnn_data::download::{file_md5, official_source};
use allcnn_data::{
    download::download_cifar, download::DownloadOptions, CifarDataset, CifarKind, DataError,
    Dataset, Split,
};

use crate::util::cifar_bytes;

#[derive(Clone, Copy)]
enum Reply {
    /// Honour Range requests.
    Full,
    /// Announce the full length, send only this many bytes, close.
    Truncate(usize),
    /// Ignore Range, always send the whole file with 200.
    NoRange,
    /// Answer with this status and no body.
    Status(u16),
    /// Send the whole file with no Content-Length (the end is the close).
    NoLength,
    /// Send the headers and half the body, then stall for 3 s.
    Stall,
    /// Redirect (302) to this location.
    Redirect(&'static str),
    /// Answer a Range request with 206 from byte 0.
    WrongRange,
}

struct Server {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

/// Serves `body` for the given replies, one connection each, then stops
/// (also stops by itself after 30 s).
fn serve(body: Vec<u8>, replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "http://{}/files/cifar-10-binary.tar.gz",
        listener.local_addr().unwrap()
    );
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        for reply in replies {
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            log.lock().unwrap().push(head.clone());
            let start: Option<usize> = head
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| r.trim().trim_end_matches('-').parse().ok());
            let len = body.len();
            let (status, extra, payload, announced): (u16, String, &[u8], usize) =
                match (reply, start) {
                    (Reply::Status(code), _) => (code, String::new(), &[], 0),
                    (Reply::Redirect(to), _) => (302, format!("Location: {to}\r\n"), &[], 0),
                    (Reply::WrongRange, _) => (
                        206,
                        format!("Content-Range: bytes 0-{}/{len}\r\n", len - 1),
                        &body[..],
                        len,
                    ),
                    (Reply::Full, Some(s)) if s >= len => {
                        (416, format!("Content-Range: bytes */{len}\r\n"), &[], 0)
                    }
                    (Reply::Full, Some(s)) => (
                        206,
                        format!("Content-Range: bytes {s}-{}/{len}\r\n", len - 1),
                        &body[s..],
                        len - s,
                    ),
                    (Reply::Truncate(n), Some(s)) => (
                        206,
                        format!("Content-Range: bytes {s}-{}/{len}\r\n", len - 1),
                        &body[s..s + n],
                        len - s,
                    ),
                    (Reply::Truncate(n), None) => (200, String::new(), &body[..n], len),
                    (Reply::Full | Reply::NoRange | Reply::NoLength, _) => {
                        (200, String::new(), &body[..], len)
                    }
                    (Reply::Stall, _) => (200, String::new(), &body[..len / 2], len),
                };
            let length = if matches!(reply, Reply::NoLength) {
                String::new()
            } else {
                format!("Content-Length: {announced}\r\n")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\n{length}Content-Type: application/gzip\r\n{extra}Connection: close\r\n\r\n"
            );
            let _ = stream.write_all(payload);
            let _ = stream.flush();
            if matches!(reply, Reply::Stall) {
                std::thread::sleep(Duration::from_secs(3));
            }
        }
    });
    Server { url, requests }
}

/// A tiny archive in the official layout (`records` per file); `skip` leaves a member out.
fn archive(records: usize, skip: Option<&str>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let kind = CifarKind::Cifar10;
    let mut members: Vec<(String, Vec<u8>)> = kind
        .files(Split::Train)
        .iter()
        .chain(kind.files(Split::Test))
        .enumerate()
        .map(|(k, f)| (f.to_string(), cifar_bytes(kind, records, k as u64)))
        .collect();
    members.push((
        "batches.meta.txt".into(),
        allcnn_data::cifar::CIFAR10_CLASSES.join("\n").into_bytes(),
    ));
    for (name, data) in members {
        if Some(name.as_str()) == skip {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), &data[..])
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn md5_of(bytes: &[u8]) -> String {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    file_md5(tmp.path()).unwrap()
}

fn opts(url: &str, md5: &str) -> DownloadOptions {
    DownloadOptions {
        url: Some(url.into()),
        md5: Some(md5.into()),
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn official_sources() {
    assert_eq!(
        official_source(CifarKind::Cifar10).1,
        "c32a1d4ab5d03f1284b67883e8d87530"
    );
    assert_eq!(
        official_source(CifarKind::Cifar100).1,
        "03b5dce01913d631647c71ecec9e9cb8"
    );
    assert!(official_source(CifarKind::Cifar10)
        .0
        .starts_with("https://www.cs.toronto.edu/~kriz/"));
}

#[test]
fn happy_path_then_nothing_to_do() {
    let body = archive(3, None);
    let md5 = md5_of(&body);
    let srv = serve(body.clone(), vec![Reply::Full]);
    let tmp = tempfile::tempdir().unwrap();
    let out = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap();
    assert!(!out.already_present && !out.resumed);
    assert_eq!(out.downloaded_bytes, body.len() as u64);
    assert_eq!(
        entries(tmp.path()),
        vec!["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    );
    assert_eq!(out.archive, Some(tmp.path().join("cifar-10-binary.tar.gz")));
    let ds = CifarDataset::load(tmp.path(), CifarKind::Cifar10, Split::Train).unwrap();
    assert_eq!(ds.len(), 15);
    assert_eq!(ds.class_names()[9], "truck");
    // Again: complete already, no request.
    let again = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap();
    assert!(again.already_present);
    assert_eq!(srv.requests.lock().unwrap().len(), 1);
}

#[test]
fn truncated_download_is_resumed() {
    let body = archive(4, None);
    let md5 = md5_of(&body);
    let half = body.len() / 2;
    let srv = serve(body.clone(), vec![Reply::Truncate(half), Reply::Full]);
    let tmp = tempfile::tempdir().unwrap();
    let err = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains("resume"), "{err}");
    let part = tmp.path().join("cifar-10-binary.tar.gz.allcnn-part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), half as u64);
    assert!(!tmp.path().join("cifar-10-batches-bin").exists());

    let out = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap();
    assert!(out.resumed);
    assert_eq!(out.downloaded_bytes, (body.len() - half) as u64);
    assert!(srv.requests.lock().unwrap()[1].contains(&format!("range: bytes={half}-")));
    assert!(!part.exists());
    assert_eq!(
        CifarDataset::load(tmp.path(), CifarKind::Cifar10, Split::Test)
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn corrupted_download_is_deleted() {
    let body = archive(2, None);
    let md5 = md5_of(&body);
    let mut bad = body.clone();
    bad[body.len() / 3] ^= 0xff;
    let srv = serve(bad, vec![Reply::Full]);
    let tmp = tempfile::tempdir().unwrap();
    let err = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap_err();
    match &err {
        DataError::Md5Mismatch { expected, .. } => assert_eq!(expected, &md5),
        e => panic!("unexpected {e:?}"),
    }
    // Says how a mirror's other build of the archive gets through.
    assert!(
        err.to_string().contains("run the download again") && err.to_string().contains("--md5"),
        "{err}"
    );
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn a_web_page_instead_of_the_archive_is_said() {
    // A login or error page served with status 200: not a gzip archive,
    // so the MD5 and --md5 are beside the point.
    let page = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n".to_vec();
    let srv = serve(page, vec![Reply::Full]);
    let tmp = tempfile::tempdir().unwrap();
    let md5 = "0".repeat(32);
    let err = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap_err();
    assert!(matches!(err, DataError::Http { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not a gzip archive (they begin `<!DOCTYPE html> <html><body>Please sign")
            && msg.contains(&srv.url)
            && !msg.contains("--md5"),
        "{msg}"
    );
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn server_without_range_restarts_cleanly() {
    let body = archive(2, None);
    let md5 = md5_of(&body);
    let srv = serve(body.clone(), vec![Reply::NoRange]);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("cifar-10-binary.tar.gz.allcnn-part"),
        vec![7u8; 100],
    )
    .unwrap();
    let out = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap();
    assert!(!out.resumed);
    assert_eq!(out.downloaded_bytes, body.len() as u64);
    assert!(srv.requests.lock().unwrap()[0].contains("range: bytes=100-"));
}

#[test]
fn bad_archives_never_look_complete() {
    let tmp = tempfile::tempdir().unwrap();
    // A well-formed archive that lacks a member (MD5 matches: a bad mirror).
    let body = archive(2, Some("test_batch.bin"));
    let srv = serve(body.clone(), vec![Reply::Full]);
    let err = download_cifar(
        CifarKind::Cifar10,
        tmp.path(),
        &opts(&srv.url, &md5_of(&body)),
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::Archive { .. }) && err.to_string().contains("test_batch.bin"),
        "{err}"
    );
    assert!(!tmp.path().join("cifar-10-batches-bin").exists());
    // The useless download is deleted too: kept, every later call tried it
    // again and failed the same way.
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
    assert!(
        err.to_string().contains("the download was deleted"),
        "{err}"
    );
    // An archive found there (not downloaded by the call) is kept, and
    // the message says what to do with it.
    std::fs::write(tmp.path().join("cifar-10-binary.tar.gz"), &body).unwrap();
    let err = download_cifar(
        CifarKind::Cifar10,
        tmp.path(),
        &opts(&srv.url, &md5_of(&body)),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("already there, not downloaded now: move it away"),
        "{err}"
    );
    assert_eq!(
        entries(tmp.path()),
        vec!["cifar-10-binary.tar.gz"],
        "no temporary folder left, the archive kept"
    );

    // A truncated gzip stream (its own MD5, so it passes the check).
    let tmp = tempfile::tempdir().unwrap();
    let mut cut = archive(3, None);
    cut.truncate(cut.len() * 2 / 3);
    let srv = serve(cut.clone(), vec![Reply::Full]);
    let err = download_cifar(
        CifarKind::Cifar10,
        tmp.path(),
        &opts(&srv.url, &md5_of(&cut)),
    )
    .unwrap_err();
    assert!(matches!(err, DataError::Archive { .. }), "{err:?}");
    // The cause is named, not just "failed to unpack" (D27 of issue 15).
    let msg = err.to_string();
    assert!(
        msg.contains("incomplete") || msg.contains("unexpected end"),
        "{msg}"
    );
    assert!(!tmp.path().join("cifar-10-batches-bin").exists());
}

#[test]
fn http_error_names_url() {
    let srv = serve(Vec::new(), vec![Reply::Status(404)]);
    let tmp = tempfile::tempdir().unwrap();
    let md5 = "0".repeat(32);
    let err = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap_err();
    assert!(matches!(err, DataError::Http { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("404") && msg.contains(&srv.url), "{msg}");
}

#[test]
fn a_file_where_the_folder_goes_is_named() {
    // No server needed: refused before any request.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("data");
    std::fs::write(&file, b"mine").unwrap();
    let md5 = "0".repeat(32);
    for (dir, says) in [
        (file.clone(), "it is a file, not a folder".to_string()),
        (
            file.join("sub"),
            format!("{} is a file, not a folder", file.display()),
        ),
    ] {
        let err = download_cifar(
            CifarKind::Cifar10,
            &dir,
            &opts("http://127.0.0.1:9/x", &md5),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&says), "{msg}");
        // The value, then the file at fault where it is not the value.
        let named = msg.matches(&*file.display().to_string()).count();
        assert_eq!(named, if dir == file { 1 } else { 2 }, "{msg}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
}

#[test]
fn a_failed_download_leaves_no_empty_folders_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let md5 = "0".repeat(32);
    // Folders this call would create are removed when nothing landed in them.
    let srv = serve(Vec::new(), vec![Reply::Status(404)]);
    let nested = tmp.path().join("data").join("cifar");
    download_cifar(CifarKind::Cifar10, &nested, &opts(&srv.url, &md5)).unwrap_err();
    assert!(
        !tmp.path().join("data").exists(),
        "{:?}",
        entries(tmp.path())
    );
    // A folder that existed before stays, and so does what it held.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    let srv = serve(Vec::new(), vec![Reply::Status(404)]);
    download_cifar(CifarKind::Cifar10, &mine, &opts(&srv.url, &md5)).unwrap_err();
    assert!(mine.is_dir());
    // A connection lost before the first byte leaves nothing to resume.
    let body = archive(2, None);
    let srv = serve(body.clone(), vec![Reply::Truncate(0)]);
    let empty = tmp.path().join("empty").join("cifar");
    download_cifar(CifarKind::Cifar10, &empty, &opts(&srv.url, &md5_of(&body))).unwrap_err();
    assert!(
        !tmp.path().join("empty").exists(),
        "{:?}",
        entries(tmp.path())
    );
    // A partial download is kept (it is resumed by the next call), and
    // with it the folders that hold it.
    let body = archive(2, None);
    let srv = serve(body.clone(), vec![Reply::Truncate(body.len() / 2)]);
    let fresh = tmp.path().join("fresh").join("cifar");
    download_cifar(CifarKind::Cifar10, &fresh, &opts(&srv.url, &md5_of(&body))).unwrap_err();
    assert!(
        fresh
            .join(format!(
                "cifar-10-binary.tar.gz{}",
                allcnn_data::download::PART_SUFFIX
            ))
            .is_file(),
        "{:?}",
        entries(&fresh)
    );
}

#[test]
fn a_file_named_like_the_url_is_never_touched() {
    // D2 of issue 15: the URL's last segment named the archive, so a user's
    // `notes.txt` was deleted before any request.
    let body = archive(2, None);
    let md5 = md5_of(&body);
    let srv = serve(body, vec![Reply::Full]);
    let url = srv.url.replace("cifar-10-binary.tar.gz", "notes.txt");
    let tmp = tempfile::tempdir().unwrap();
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let mut o = opts(&url, &md5);
    o.remove_archive = true;
    let out = download_cifar(CifarKind::Cifar10, tmp.path(), &o).unwrap();
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
    assert_eq!(
        entries(tmp.path()),
        vec!["cifar-10-batches-bin", "notes.txt"]
    );
    // The removed archive is not reported (`--json` listed it).
    assert_eq!(out.archive, None);
    // Nor by a later call that finds the dataset complete.
    o.remove_archive = false;
    let again = download_cifar(CifarKind::Cifar10, tmp.path(), &o).unwrap();
    assert!(again.already_present);
    assert_eq!(again.archive, None);
}

#[test]
fn a_foreign_file_under_the_archive_name_is_reported_not_deleted() {
    let body = archive(2, None);
    let md5 = md5_of(&body);
    let srv = serve(body, vec![Reply::Full]);
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("cifar-10-binary.tar.gz");
    std::fs::write(&foreign, "not an archive").unwrap();
    for force in [false, true] {
        let mut o = opts(&srv.url, &md5);
        o.force = force;
        let err = download_cifar(CifarKind::Cifar10, tmp.path(), &o).unwrap_err();
        assert!(matches!(err, DataError::ForeignFile { .. }), "{err:?}");
        assert!(err.to_string().contains("move it away"), "{err}");
        assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "not an archive");
    }
    assert!(srv.requests.lock().unwrap().is_empty());
}

#[test]
fn a_malformed_md5_is_refused_before_any_request() {
    let srv = serve(archive(1, None), vec![Reply::Full]);
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["not-hex", "00", &"g".repeat(32)] {
        let err = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, bad)).unwrap_err();
        assert!(
            matches!(err, DataError::InvalidConfig { name: "md5", .. }),
            "{bad}: {err:?}"
        );
    }
    assert!(srv.requests.lock().unwrap().is_empty());
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn oversized_and_stalled_downloads_end_by_themselves() {
    // D5 of issue 15: an endless body wrote 4 GB; a stall hung for ever.
    let body = archive(3, None);
    let md5 = md5_of(&body);
    let cap = (body.len() / 2) as u64;
    for reply in [Reply::Full, Reply::NoLength] {
        let srv = serve(body.clone(), vec![reply]);
        let tmp = tempfile::tempdir().unwrap();
        let mut o = opts(&srv.url, &md5);
        o.max_bytes = Some(cap);
        let err = download_cifar(CifarKind::Cifar10, tmp.path(), &o).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::InvalidConfig {
                    name: "max_bytes",
                    ..
                }
            ) && err.to_string().contains("raise it (--max-bytes)"),
            "{err}"
        );
        assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
    }
    let srv = serve(body.clone(), vec![Reply::Stall]);
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(&srv.url, &md5);
    o.body_timeout = Some(Duration::from_millis(500));
    let t0 = Instant::now();
    let err = download_cifar(CifarKind::Cifar10, tmp.path(), &o).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(
        matches!(err, DataError::Http { .. } | DataError::Truncated { .. }),
        "{err:?}"
    );

    // A stall is noticed after the idle timeout, long before the body's, and
    // said as one; what came before it is kept and resumed.
    let srv = serve(body.clone(), vec![Reply::Stall, Reply::Full]);
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(&srv.url, &md5);
    o.idle_timeout = Some(Duration::from_millis(300));
    let t0 = Instant::now();
    let err = download_cifar(CifarKind::Cifar10, tmp.path(), &o).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let half = body.len() / 2;
    assert!(
        matches!(err, DataError::Http { .. })
            && err.to_string().contains(&format!(
                "the server sent nothing for 0.3 s after {half} bytes (a stalled connection)"
            ))
            && err.to_string().contains("run again to resume"),
        "{err}"
    );
    assert_eq!(entries(tmp.path()), ["cifar-10-binary.tar.gz.allcnn-part"]);
    let out = download_cifar(CifarKind::Cifar10, tmp.path(), &o).unwrap();
    assert!(out.resumed);
    assert_eq!(out.downloaded_bytes, (body.len() - half) as u64);
}

/// `archive(3, None)` plus `extra` members appended by `add`.
fn archive_with(add: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>)) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    add(&mut tar);
    // The official members after the hostile ones, so those are met first.
    let inner = archive(3, None);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&inner[..]));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let path = e.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        tar.append_data(&mut h, path, &data[..]).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn link(
    tar: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
    kind: tar::EntryType,
    name: &str,
    target: &Path,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(0o777);
    tar.append_link(&mut h, name, target).unwrap();
}

#[test]
fn hostile_archive_members_never_reach_the_disk() {
    // D10 of issue 15.
    use std::os::unix::fs::PermissionsExt;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.bin");
    std::fs::write(&secret, vec![7u8; 3073]).unwrap();
    let run = |body: Vec<u8>| {
        let tmp = tempfile::tempdir().unwrap();
        let srv = serve(body.clone(), vec![Reply::Full]);
        let r = download_cifar(
            CifarKind::Cifar10,
            tmp.path(),
            &opts(&srv.url, &md5_of(&body)),
        );
        (tmp, r)
    };

    // An expected member that is a symlink to a file outside: refused.
    let (tmp, r) = run(archive_with(|t| {
        link(
            t,
            tar::EntryType::Symlink,
            "cifar-10-batches-bin/data_batch_1.bin",
            &secret,
        )
    }));
    let err = r.unwrap_err().to_string();
    assert!(
        err.contains("data_batch_1.bin") && err.contains("not a regular file"),
        "{err}"
    );
    assert!(!tmp.path().join("cifar-10-batches-bin").exists());

    // A top folder that is a symlink to an outside folder, an unexpected
    // executable member and a path outside: the folder is a real one, the
    // extra members are skipped, nothing is written outside, modes are sane.
    let (tmp, r) = run(archive_with(|t| {
        link(
            t,
            tar::EntryType::Symlink,
            "cifar-10-batches-bin",
            outside.path(),
        );
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o4777);
        h.set_cksum();
        t.append_data(&mut h, "cifar-10-batches-bin/evil.sh", &b"boom\n"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "elsewhere/notes.txt", &b"hello"[..])
            .unwrap();
    }));
    r.unwrap();
    let folder = tmp.path().join("cifar-10-batches-bin");
    assert!(!std::fs::symlink_metadata(&folder)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!folder.join("evil.sh").exists() && !tmp.path().join("elsewhere").exists());
    assert_eq!(
        entries(outside.path()),
        vec!["secret.bin"],
        "nothing written outside"
    );
    for f in std::fs::read_dir(&folder).unwrap() {
        let mode = f.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o7111, 0, "mode {mode:o}");
    }
    assert_eq!(
        CifarDataset::load(tmp.path(), CifarKind::Cifar10, Split::Train)
            .unwrap()
            .len(),
        15
    );

    // A data member larger than the official file.
    let (tmp, r) = run(archive_with(|t| {
        let big = vec![0u8; 10_001 * 3073];
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "cifar-10-batches-bin/test_batch.bin", &big[..])
            .unwrap();
    }));
    let err = r.unwrap_err().to_string();
    assert!(
        err.contains("test_batch.bin") && err.contains("more than"),
        "{err}"
    );
    assert!(!tmp.path().join("cifar-10-batches-bin").exists());
}

#[test]
fn download_errors_say_what_happened() {
    // D26 of issue 15: a file:// URL, a redirect to file:// and a server
    // that resumes at the wrong byte each get a message that says so.
    let body = archive(2, None);
    let md5 = md5_of(&body);
    let tmp = tempfile::tempdir().unwrap();
    let err = download_cifar(
        CifarKind::Cifar10,
        tmp.path(),
        &opts("file:///etc/passwd", &md5),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("only http:// and https://")
            && err.contains("cifar-10-binary.tar.gz")
            && !err.contains("check the network"),
        "{err}"
    );

    let srv = serve(body.clone(), vec![Reply::Redirect("file:///etc/passwd")]);
    let err = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("redirected to `file:///etc/passwd`"), "{err}");

    // A redirect to a path on the same server is followed, with the Range.
    let srv = serve(
        body.clone(),
        vec![Reply::Redirect("/mirror/cifar.tgz"), Reply::Full],
    );
    download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5)).unwrap();
    assert!(srv.requests.lock().unwrap()[1].starts_with("get /mirror/cifar.tgz"));

    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("cifar-10-binary.tar.gz.allcnn-part");
    std::fs::write(&part, &body[..100]).unwrap();
    let srv = serve(body.clone(), vec![Reply::WrongRange]);
    let err = download_cifar(CifarKind::Cifar10, tmp.path(), &opts(&srv.url, &md5))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("resume at byte 100") && err.contains("at byte 0") && !err.contains("Some("),
        "{err}"
    );
}
