//! `hf://` references: parsing, download from a mock Hub on 127.0.0.1 into a
//! temporary cache, offline reuse, a pre-filled cache, and the errors.

use std::time::Instant;

use allcnn_models::hub::{fetch, resolve, HubError, HubOptions, HubRef, SYNTAX};
use allcnn_models::{AllCnn, ArchSpec, Init, WeightsFile, WeightsMeta};
use allcnn_testing::mock_hub::{prefill_cache, MockHub, MOCK_COMMIT};
use candle_core::Device;

/// A small self-describing weights file, as bytes.
fn weights_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    AllCnn::init(
        ArchSpec::by_name("all-cnn-a", 3).unwrap(),
        Init::HeNormal,
        7,
        &Device::Cpu,
    )
    .unwrap()
    .save(&path, &WeightsMeta::default(), &[])
    .unwrap();
    std::fs::read(path).unwrap()
}

/// Options that ignore the environment: this cache, this endpoint.
fn options(cache: &std::path::Path, endpoint: &str) -> HubOptions {
    HubOptions::default()
        .cache_dir(cache)
        .endpoint(endpoint)
        .offline(false)
}

/// An endpoint where nothing listens.
fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[test]
fn references_parse_print_and_reject_malformed_text() {
    let r: HubRef = "hf://someone/all-cnn-c".parse().unwrap();
    assert_eq!(r, HubRef::new("someone", "all-cnn-c"));
    assert_eq!(r.file, "model.safetensors");
    assert_eq!(r.revision, "main");
    assert_eq!(r.repo_id(), "someone/all-cnn-c");

    let r: HubRef = "hf://Org.x/my_model-2/runs/best.safetensors@v1.0"
        .parse()
        .unwrap();
    assert_eq!(
        r,
        HubRef::new("Org.x", "my_model-2")
            .with_file("runs/best.safetensors")
            .with_revision("v1.0")
    );
    let sha = format!("hf://a/b@{MOCK_COMMIT}");
    assert_eq!(sha.parse::<HubRef>().unwrap().revision, MOCK_COMMIT);
    let pr: HubRef = "hf://a/b@refs/pr/3".parse().unwrap();
    assert_eq!(pr.revision, "refs/pr/3");
    assert_eq!(
        pr.url("http://h/"),
        "http://h/a/b/resolve/refs%2Fpr%2F3/model.safetensors"
    );

    // Display omits defaults and round-trips.
    for text in [
        "hf://a/b",
        "hf://a/b/w.safetensors",
        "hf://a/b@dev",
        "hf://a/b/x/y.safetensors@refs/pr/1",
    ] {
        let r: HubRef = text.parse().unwrap();
        assert_eq!(r.to_string(), text);
        assert_eq!(r.to_string().parse::<HubRef>().unwrap(), r);
    }

    for (text, why) in [
        ("someone/repo", "does not start with `hf://`"),
        (
            "hf://",
            "OWNER/REPO is incomplete; expected hf://OWNER/REPO",
        ),
        (
            "hf://someone",
            "OWNER/REPO is incomplete; expected hf://OWNER/REPO",
        ),
        ("hf://someone/", "repository name"),
        ("hf:///repo", "owner"),
        ("hf://someone/repo/", "file name"),
        ("hf://someone/repo@", "revision"),
        ("hf://someone/repo/a//b.safetensors", "path segment"),
        ("hf://someone/repo/../x", "path segment"),
        ("hf://some--one/repo", "`--`"),
        ("hf://someone/-repo", "starts or ends"),
        ("hf://some one/repo", "contains ' '"),
        ("hf://some$/repo", "contains '$'"),
        ("hf://a/b@x@y", "revision"),
        ("hf://a/b@x..y", "revision"),
        ("hf://a/b@v1/model.safetensors", "the file goes before `@`"),
    ] {
        let e = text.parse::<HubRef>().unwrap_err();
        assert!(matches!(e, HubError::BadReference { .. }), "{text}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(text) && msg.contains(why) && msg.contains(SYNTAX),
            "{text}: {msg}"
        );
    }
}

#[test]
fn offline_switch_comes_from_the_options_first() {
    assert_eq!(HubOptions::default().offline(false).offline_reason(), None);
    assert!(HubOptions::default()
        .offline(true)
        .offline_reason()
        .is_some());
}

#[test]
fn downloads_into_the_cache_then_reuses_it_offline() {
    let bytes = weights_bytes();
    let hub = MockHub::start(vec![("someone/tiny", "model.safetensors", bytes.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let r: HubRef = "hf://someone/tiny".parse().unwrap();

    let path = resolve(&r, &options(cache.path(), &hub.endpoint())).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(path.starts_with(cache.path().join("models--someone--tiny/snapshots")));
    assert_eq!(
        std::fs::read_to_string(cache.path().join("models--someone--tiny/refs/main")).unwrap(),
        MOCK_COMMIT
    );
    let reqs = hub.requests();
    assert!(
        reqs.contains(&"HEAD /someone/tiny/resolve/main/model.safetensors".to_string())
            && reqs.contains(&"GET /someone/tiny/resolve/main/model.safetensors".to_string()),
        "{reqs:?}"
    );

    // Cached: no request at all, even online.
    let n = hub.requests().len();
    let again = resolve(&r, &options(cache.path(), &hub.endpoint())).unwrap();
    assert_eq!(again, path);
    assert_eq!(hub.requests().len(), n, "a cached file is not asked for");

    // Server gone: offline and online both resolve from the cache.
    let endpoint = hub.endpoint();
    hub.stop();
    let offline = resolve(&r, &options(cache.path(), &endpoint).offline(true)).unwrap();
    assert_eq!(offline, path);
    assert_eq!(
        resolve(&r, &options(cache.path(), &endpoint)).unwrap(),
        path
    );
    let w = WeightsFile::load(&offline, &Device::Cpu).unwrap();
    assert_eq!(w.model.spec().name, "all-cnn-a");
    assert_eq!(w.model.classes(), 3);

    // The commit as the revision finds the same snapshot.
    let by_commit = r.clone().with_revision(MOCK_COMMIT);
    assert_eq!(
        resolve(&by_commit, &options(cache.path(), &endpoint).offline(true)).unwrap(),
        path
    );
}

#[test]
fn a_prefilled_cache_resolves_offline() {
    let bytes = weights_bytes();
    let cache = tempfile::tempdir().unwrap();
    let snap = prefill_cache(
        cache.path(),
        "someone/prefilled",
        "main",
        MOCK_COMMIT,
        "model.safetensors",
        &bytes,
    );
    // Nothing listens at the endpoint: any request would fail.
    let opts = options(cache.path(), &dead_endpoint()).offline(true);
    let path = fetch("hf://someone/prefilled", &opts).unwrap();
    assert_eq!(path, snap);
    assert!(WeightsFile::load(&path, &Device::Cpu).is_ok());
    // Online too: the cache is asked first.
    let online = options(cache.path(), &dead_endpoint());
    assert_eq!(fetch("hf://someone/prefilled", &online).unwrap(), snap);
    // Another file of the same snapshot is a miss.
    let e = fetch("hf://someone/prefilled/other.safetensors", &opts).unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e:?}");
}

#[test]
fn offline_miss_says_where_it_looked_and_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &dead_endpoint()).offline(true);
    let e = fetch("hf://someone/absent@v2", &opts).unwrap_err();
    let HubError::NotCached {
        reference,
        cache_dir,
        reason,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(reference.to_string(), "hf://someone/absent@v2");
    assert_eq!(cache_dir, cache.path());
    assert!(reason.contains("offline"), "{reason}");
    let msg = e.to_string();
    assert!(
        msg.contains("hf://someone/absent@v2")
            && msg.contains(&cache.path().display().to_string())
            && msg.contains("not in the Hugging Face cache")
            && msg.contains("run once without --offline"),
        "{msg}"
    );
}

#[test]
fn not_found_on_the_hub_is_a_404_error_with_the_url() {
    let hub = MockHub::start(vec![("someone/tiny", "model.safetensors", vec![1, 2, 3])]);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &hub.endpoint());
    for text in [
        "hf://someone/tiny/missing.safetensors",
        "hf://someone/nothing-here",
        "hf://someone/tiny@no-such-branch",
    ] {
        let e = fetch(text, &opts).unwrap_err();
        let HubError::NotFound { url, .. } = &e else {
            panic!("{text}: {e:?}")
        };
        assert!(url.starts_with(&hub.endpoint()), "{url}");
        let msg = e.to_string();
        assert!(msg.contains(text) && msg.contains("404"), "{msg}");
    }
    // Asking again offline is a plain miss (hf-hub recorded the 404).
    let e = fetch(
        "hf://someone/tiny/missing.safetensors",
        &opts.clone().offline(true),
    )
    .unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e:?}");
}

#[test]
fn a_dead_network_fails_fast_naming_the_endpoint() {
    let cache = tempfile::tempdir().unwrap();
    let endpoint = dead_endpoint();
    let t0 = Instant::now();
    let e = fetch("hf://someone/tiny", &options(cache.path(), &endpoint)).unwrap_err();
    assert!(t0.elapsed().as_secs_f64() < 5.0, "took {:?}", t0.elapsed());
    assert!(matches!(e, HubError::Download { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&endpoint) && msg.contains("hf://someone/tiny") && msg.contains("--offline"),
        "{msg}"
    );
}

/// A server that takes the connection and never answers (a black-holing
/// proxy): the lookup gives up after the stall timeout, naming the
/// endpoint, instead of hanging.
#[test]
fn a_server_that_never_answers_is_given_up_on() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accept and hold every connection, sending nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &endpoint)
        .retries(0)
        .stall_timeout(std::time::Duration::from_millis(700));
    let t0 = Instant::now();
    let e = fetch("hf://someone/tiny", &opts).unwrap_err();
    let took = t0.elapsed().as_secs_f64();
    assert!((0.6..10.0).contains(&took), "took {took} s");
    assert!(matches!(e, HubError::Stalled { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&endpoint) && msg.contains("no answer for 0.7 s") && msg.contains("--offline"),
        "{msg}"
    );
    // Nothing half-written is left in the cache.
    let files: Vec<_> = walk(cache.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!(files.is_empty(), "{files:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
