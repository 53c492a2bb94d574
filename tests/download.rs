//! The download command against a fake Hugging Face Hub on 127.0.0.1 (an ephemeral port): a
//! tiny copy of the three release repositories, LFS files announced with sha256 ETags and served
//! through a redirect as the Hub does, Range support, and switches to cut a transfer, ignore
//! Range, announce a wrong checksum or gate a repository. No test reaches the internet.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use starflow_studio::download::{
    DownloadError, DownloadOptions, FileAction, Part, Verification, download_release,
};

/// The fake Hub stops on its own after this long, whatever a test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);
/// Longest wait for one socket read or write, in the server and in the client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Header lines a request may have before the server gives up on it.
const MAX_HEADER_LINES: usize = 64;

const FLOW: &str = "apple/starflow/starflow_3B_t2i_256x256.pth";
const T5_INDEX: &str = "google/flan-t5-xl/model.safetensors.index.json";
const T5_SHARD_1: &str = "google/flan-t5-xl/model-00001-of-00002.safetensors";
const T5_SHARD_2: &str = "google/flan-t5-xl/model-00002-of-00002.safetensors";
const VAE_WEIGHTS: &str = "stabilityai/sd-vae-ft-ema/diffusion_pytorch_model.safetensors";

/// One file of the fake Hub.
#[derive(Clone, Default)]
struct FakeFile {
    body: Vec<u8>,
    /// Stored with Git LFS: announced by sha256 and served through a redirect to `/cdn/`.
    lfs: bool,
    /// Announce the sha256 of other bytes.
    wrong_sha256: bool,
    /// The first `cut_gets` GETs of the body promise all of it but send `cut_at_bytes`, then
    /// close the connection.
    cut_gets: usize,
    cut_at_bytes: usize,
    /// Answer a Range request with the whole body (200).
    ignore_range: bool,
}

/// One request the fake Hub saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

#[derive(Default)]
struct Repos {
    /// `owner/name/file` -> file.
    files: HashMap<String, FakeFile>,
    /// `owner/name` -> the token it requires.
    gated: HashMap<String, String>,
}

struct FakeHub {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    fn start(repos: Repos) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let endpoint = format!("http://{}", listener.local_addr().expect("bound address"));
        listener.set_nonblocking(true).expect("non-blocking listener");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));

        let (thread_seen, thread_stop) = (seen.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-hub".into())
            .spawn(move || serve(listener, repos, thread_seen, thread_stop))
            .expect("spawn the fake hub");
        Self { endpoint, seen, stop, thread: Some(thread) }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// The GETs that reached the CDN for `key` (`owner/name/file`), in order.
    fn cdn_gets(&self, key: &str) -> Vec<Seen> {
        let path = format!("/cdn/{key}");
        self.seen().into_iter().filter(|seen| seen.method == "GET" && seen.path == path).collect()
    }

    fn options(&self) -> DownloadOptions {
        DownloadOptions {
            endpoint: self.endpoint.clone(),
            token: None,
            parts: Part::ALL.to_vec(),
            progress: false,
            attempts: 3,
            retry_delay: Duration::from_millis(10),
            stall_timeout: IO_TIMEOUT,
            proxy_from_env: false,
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, repos: Repos, seen: Arc<Mutex<Vec<Seen>>>, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut cuts: HashMap<String, usize> = HashMap::new();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < SERVER_LIFETIME {
        match listener.accept() {
            Ok((stream, _)) => {
                // A failed exchange is the client's to report; the server goes on.
                let _ = handle(stream, &repos, &seen, &mut cuts);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return,
        }
    }
}

fn handle(
    stream: TcpStream,
    repos: &Repos,
    seen: &Mutex<Vec<Seen>>,
    cuts: &mut HashMap<String, usize>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    for _ in 0..MAX_HEADER_LINES {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let request = Seen {
        method,
        path,
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    seen.lock().expect("seen lock").push(request.clone());
    respond(stream, repos, &request, cuts)
}

fn respond(
    mut stream: TcpStream,
    repos: &Repos,
    request: &Seen,
    cuts: &mut HashMap<String, usize>,
) -> std::io::Result<()> {
    let head = request.method == "HEAD";
    if let Some(key) = request.path.strip_prefix("/cdn/") {
        return match repos.files.get(key) {
            Some(file) => send_body(stream, key, file, request, cuts),
            None => send(&mut stream, "404 Not Found", &[], b"", head),
        };
    }

    // /{owner}/{name}/resolve/main/{file}
    let parts: Vec<&str> = request.path.trim_start_matches('/').splitn(5, '/').collect();
    let [owner, name, "resolve", "main", file] = parts[..] else {
        return send(&mut stream, "400 Bad Request", &[], b"", head);
    };
    let repo = format!("{owner}/{name}");
    if let Some(token) = repos.gated.get(&repo) {
        let expected = format!("Bearer {token}");
        match request.authorization.as_deref() {
            Some(auth) if auth == expected => {}
            Some(_) => return send(&mut stream, "401 Unauthorized", &[], b"", head),
            None => {
                let code = [("X-Error-Code", "GatedRepo".to_string())];
                return send(&mut stream, "401 Unauthorized", &code, b"", head);
            }
        }
    }
    let key = format!("{repo}/{file}");
    let Some(fake) = repos.files.get(&key) else {
        let code = [("X-Error-Code", "EntryNotFound".to_string())];
        return send(&mut stream, "404 Not Found", &code, b"", head);
    };

    if fake.lfs {
        let announced = if fake.wrong_sha256 { b"other bytes".to_vec() } else { fake.body.clone() };
        let sha = sha256_hex(&announced);
        let headers = [
            ("Location", format!("/cdn/{key}")),
            ("X-Linked-Etag", format!("\"{sha}\"")),
            ("X-Linked-Size", fake.body.len().to_string()),
            ("ETag", format!("\"{sha}\"")),
        ];
        return send(&mut stream, "302 Found", &headers, b"", head);
    }
    if head {
        // Git-stored files carry a git blob id (40 hex digits), no sha256.
        let blob_id = sha256_hex(&fake.body)[..40].to_string();
        let headers = [("ETag", format!("\"{blob_id}\""))];
        return send_len(&mut stream, "200 OK", &headers, fake.body.len());
    }
    send_body(stream, &key, fake, request, cuts)
}

/// The body, or the range asked for, cut short if the file says so.
fn send_body(
    mut stream: TcpStream,
    key: &str,
    file: &FakeFile,
    request: &Seen,
    cuts: &mut HashMap<String, usize>,
) -> std::io::Result<()> {
    let len = file.body.len();
    let start = match request.range.as_deref() {
        Some(range) if !file.ignore_range => {
            let start = range.trim_start_matches("bytes=").trim_end_matches('-');
            start.parse::<usize>().map_err(std::io::Error::other)?
        }
        _ => 0,
    };
    if start >= len && start > 0 {
        let headers = [("Content-Range", format!("bytes */{len}"))];
        return send(&mut stream, "416 Range Not Satisfiable", &headers, b"", false);
    }
    let (status, headers) = match start {
        0 => ("200 OK", vec![]),
        _ => (
            "206 Partial Content",
            vec![("Content-Range", format!("bytes {start}-{}/{len}", len - 1))],
        ),
    };
    let body = &file.body[start..];

    let cut_so_far = cuts.entry(key.to_string()).or_default();
    if *cut_so_far < file.cut_gets {
        *cut_so_far += 1;
        send_len(&mut stream, status, &headers, body.len())?;
        stream.write_all(&body[..file.cut_at_bytes.min(body.len())])?;
        stream.flush()?;
        return stream.shutdown(Shutdown::Both);
    }
    send(&mut stream, status, &headers, body, false)
}

fn send(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    send_len(stream, status, headers, body.len())?;
    if !head {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn send_len(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    content_length: usize,
) -> std::io::Result<()> {
    let mut text = format!("HTTP/1.1 {status}\r\nContent-Length: {content_length}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    stream.write_all(text.as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Bytes that differ from file to file and position to position.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

fn lfs(seed: u32, len: usize) -> FakeFile {
    FakeFile { body: pattern(seed, len), lfs: true, ..FakeFile::default() }
}

fn git(text: &str) -> FakeFile {
    FakeFile { body: text.as_bytes().to_vec(), ..FakeFile::default() }
}

/// The three release repositories at a tiny size; the text encoder has two shards.
fn release() -> Repos {
    let index = r#"{"metadata": {"total_size": 3000},
        "weight_map": {"shared.weight": "model-00001-of-00002.safetensors",
                       "encoder.block.0.layer.0.SelfAttention.q.weight":
                           "model-00001-of-00002.safetensors",
                       "encoder.final_layer_norm.weight": "model-00002-of-00002.safetensors"}}"#;
    let files = [
        (FLOW, lfs(1, 300_000)),
        ("google/flan-t5-xl/config.json", git(r#"{"d_model": 8}"#)),
        ("google/flan-t5-xl/tokenizer.json", git(r#"{"version": "1.0"}"#)),
        (T5_INDEX, git(index)),
        (T5_SHARD_1, lfs(2, 2_000)),
        (T5_SHARD_2, lfs(3, 1_000)),
        ("stabilityai/sd-vae-ft-ema/config.json", git(r#"{"latent_channels": 4}"#)),
        (VAE_WEIGHTS, lfs(4, 50_000)),
    ];
    let files = files.into_iter().map(|(key, file)| (key.to_string(), file)).collect();
    Repos { files, gated: HashMap::new() }
}

fn with(mut repos: Repos, key: &str, change: impl FnOnce(&mut FakeFile)) -> Repos {
    change(repos.files.get_mut(key).expect("the fake release has this file"));
    repos
}

/// Where a repository file lands in the model directory.
fn local(dir: &Path, key: &str) -> std::path::PathBuf {
    let (repo, file) = key.rsplit_once('/').expect("owner/name/file");
    let folder = match repo {
        "apple/starflow" => "",
        "google/flan-t5-xl" => "text_encoder",
        "stabilityai/sd-vae-ft-ema" => "vae",
        _ => panic!("no such repository in the fake release: {repo}"),
    };
    dir.join(folder).join(file)
}

fn assert_no_part_files(dir: &Path) {
    for folder in [dir.to_path_buf(), dir.join("text_encoder"), dir.join("vae")] {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            assert!(!name.ends_with(".part"), "left behind: {:?}", entry.path());
        }
    }
}

#[test]
fn full_download_fetches_every_part_into_the_model_layout() {
    let repos = release();
    let expected: Vec<(String, Vec<u8>)> =
        repos.files.iter().map(|(key, file)| (key.clone(), file.body.clone())).collect();
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("starflow-3b");

    let report = download_release(&model, &hub.options()).expect("download");

    for (key, body) in &expected {
        let path = local(&model, key);
        assert_eq!(std::fs::read(&path).expect("downloaded file"), *body, "{path:?}");
    }
    assert_eq!(report.files.len(), expected.len());
    assert_eq!(report.bytes_fetched(), expected.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
    for file in &report.files {
        let lfs = file.file.ends_with(".safetensors") || file.file.ends_with(".pth");
        let verification = if lfs { Verification::Sha256 } else { Verification::Size };
        assert_eq!(file.verification, verification, "{}", file.file);
        assert_eq!(file.action, FileAction::Downloaded { resumed_from_bytes: 0, tries: 1 });
    }
    assert_no_part_files(&model);
}

#[test]
fn second_run_skips_complete_files_without_fetching_them() {
    let hub = FakeHub::start(release());
    let dir = tempfile::tempdir().expect("temp dir");
    download_release(dir.path(), &hub.options()).expect("first download");
    let gets_before = hub.seen().iter().filter(|s| s.method == "GET").count();

    let report = download_release(dir.path(), &hub.options()).expect("second download");

    assert!(report.files.iter().all(|file| file.action == FileAction::AlreadyComplete));
    assert_eq!(report.bytes_fetched(), 0);
    let gets_after = hub.seen().iter().filter(|s| s.method == "GET").count();
    assert_eq!(gets_after, gets_before, "a complete file was fetched again");
}

#[test]
fn cut_transfer_is_resumed_with_a_range_request() {
    let repos = with(release(), FLOW, |file| {
        file.cut_gets = 1;
        file.cut_at_bytes = 100_000;
    });
    let body = repos.files[FLOW].body.clone();
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");
    let options = DownloadOptions { parts: vec![Part::Flow], ..hub.options() };

    let report = download_release(dir.path(), &options).expect("download");

    assert_eq!(std::fs::read(local(dir.path(), FLOW)).expect("flow file"), body);
    let gets = hub.cdn_gets(FLOW);
    let ranges: Vec<Option<&str>> = gets.iter().map(|get| get.range.as_deref()).collect();
    assert_eq!(ranges, [None, Some("bytes=100000-")]);
    assert_eq!(report.files[0].action, FileAction::Downloaded { resumed_from_bytes: 0, tries: 2 });
    assert_no_part_files(dir.path());
}

#[test]
fn part_file_from_an_earlier_run_is_resumed() {
    let repos = release();
    let body = repos.files[VAE_WEIGHTS].body.clone();
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");
    let target = local(dir.path(), VAE_WEIGHTS);
    std::fs::create_dir_all(target.parent().expect("vae folder")).expect("vae folder");
    let part = target.with_file_name("diffusion_pytorch_model.safetensors.part");
    std::fs::write(&part, &body[..20_000]).expect("write part");
    let options = DownloadOptions { parts: vec![Part::Vae], ..hub.options() };

    let report = download_release(dir.path(), &options).expect("download");

    assert_eq!(std::fs::read(&target).expect("vae weights"), body);
    let gets = hub.cdn_gets(VAE_WEIGHTS);
    assert_eq!(gets.last().and_then(|get| get.range.clone()).as_deref(), Some("bytes=20000-"));
    let weights = report.files.iter().find(|file| file.path == target).expect("reported");
    assert_eq!(weights.action, FileAction::Downloaded { resumed_from_bytes: 20_000, tries: 1 });
    assert_eq!(
        report.bytes_fetched(),
        (body.len() - 20_000 + r#"{"latent_channels": 4}"#.len()) as u64
    );
    assert!(!part.exists());
}

#[test]
fn server_that_ignores_range_gets_the_file_restarted() {
    let repos = with(release(), VAE_WEIGHTS, |file| file.ignore_range = true);
    let body = repos.files[VAE_WEIGHTS].body.clone();
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");
    let target = local(dir.path(), VAE_WEIGHTS);
    std::fs::create_dir_all(target.parent().expect("vae folder")).expect("vae folder");
    let part = target.with_file_name("diffusion_pytorch_model.safetensors.part");
    std::fs::write(&part, &body[..20_000]).expect("write part");
    let options = DownloadOptions { parts: vec![Part::Vae], ..hub.options() };

    download_release(dir.path(), &options).expect("download");

    assert_eq!(std::fs::read(&target).expect("vae weights"), body, "not restarted from zero");
}

#[test]
fn transfer_cut_on_every_try_is_an_error_that_keeps_the_part_for_later() {
    let repos = with(release(), FLOW, |file| {
        file.cut_gets = usize::MAX;
        file.cut_at_bytes = 1_000;
    });
    let body = repos.files[FLOW].body.clone();
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");
    let options = DownloadOptions { parts: vec![Part::Flow], attempts: 3, ..hub.options() };

    let error = download_release(dir.path(), &options).expect_err("cut every time");

    assert!(
        matches!(error, DownloadError::Interrupted { received: 3_000, tries: 3, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("Run download again"), "{error}");
    let target = local(dir.path(), FLOW);
    assert!(!target.exists());
    let part = std::fs::read(target.with_file_name("starflow_3B_t2i_256x256.pth.part"));
    assert_eq!(part.expect("part kept"), &body[..3_000]);
}

#[test]
fn wrong_checksum_is_an_error_and_leaves_no_file() {
    let hub = FakeHub::start(with(release(), VAE_WEIGHTS, |file| file.wrong_sha256 = true));
    let dir = tempfile::tempdir().expect("temp dir");
    let options = DownloadOptions { parts: vec![Part::Vae], ..hub.options() };

    let error = download_release(dir.path(), &options).expect_err("corrupt file");

    assert!(matches!(error, DownloadError::ChecksumMismatch { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("sha256") && message.contains(&sha256_hex(b"other bytes")),
        "{message}"
    );
    assert!(message.contains("diffusion_pytorch_model.safetensors"), "{message}");
    let target = local(dir.path(), VAE_WEIGHTS);
    assert!(!target.exists(), "a corrupt file was kept");
    assert_no_part_files(dir.path());
}

#[test]
fn missing_file_names_the_repository_and_the_file() {
    let mut repos = release();
    repos.files.remove("google/flan-t5-xl/tokenizer.json");
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");

    let error = download_release(dir.path(), &hub.options()).expect_err("missing file");

    assert!(matches!(error, DownloadError::NotFound { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("google/flan-t5-xl"), "{message}");
    assert!(message.contains("\"tokenizer.json\""), "{message}");
    assert!(message.contains("404"), "{message}");
}

#[test]
fn gated_repository_without_a_token_says_to_set_hf_token() {
    let mut repos = release();
    repos.gated.insert("apple/starflow".into(), "hf_test".into());
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");
    let options = DownloadOptions { parts: vec![Part::Flow], ..hub.options() };

    let error = download_release(dir.path(), &options).expect_err("gated");

    assert!(matches!(error, DownloadError::Unauthorized { status: 401, .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("HF_TOKEN") && message.contains("apple/starflow"), "{message}");
    assert!(!local(dir.path(), FLOW).exists());
}

#[test]
fn gated_repository_with_the_token_downloads_and_sends_it() {
    let mut repos = release();
    repos.gated.insert("apple/starflow".into(), "hf_test".into());
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");
    let token = Some("hf_test".to_string());
    let options = DownloadOptions { parts: vec![Part::Flow], token, ..hub.options() };

    download_release(dir.path(), &options).expect("download with token");

    assert!(local(dir.path(), FLOW).is_file());
    let resolves = hub.seen().into_iter().filter(|seen| seen.path.contains("/resolve/"));
    for seen in resolves {
        assert_eq!(seen.authorization.as_deref(), Some("Bearer hf_test"), "{seen:?}");
    }
}

#[test]
fn token_without_access_says_so() {
    let mut repos = release();
    repos.gated.insert("apple/starflow".into(), "hf_right".into());
    let hub = FakeHub::start(repos);
    let dir = tempfile::tempdir().expect("temp dir");
    let token = Some("hf_wrong".to_string());
    let options = DownloadOptions { parts: vec![Part::Flow], token, ..hub.options() };

    let error = download_release(dir.path(), &options).expect_err("wrong token");

    let message = error.to_string();
    assert!(message.contains("does not grant access"), "{message}");
}

#[test]
fn unreachable_server_is_a_network_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let options = DownloadOptions {
        endpoint: format!("http://127.0.0.1:{port}"),
        token: None,
        parts: vec![Part::Vae],
        progress: false,
        attempts: 2,
        retry_delay: Duration::from_millis(10),
        stall_timeout: IO_TIMEOUT,
        proxy_from_env: false,
    };

    let error = download_release(dir.path(), &options).expect_err("no server");

    assert!(matches!(error, DownloadError::Network { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("internet connection"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}/stabilityai/sd-vae-ft-ema")), "{message}");
}

#[test]
fn target_folder_that_cannot_be_created_is_named() {
    let hub = FakeHub::start(release());
    let dir = tempfile::tempdir().expect("temp dir");
    // A file where the model folder should be: no permission trick, so this holds for root too.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").expect("write blocker");
    let model = blocker.join("starflow-3b");

    let error = download_release(&model, &hub.options()).expect_err("unwritable");

    assert!(matches!(error, DownloadError::Folder { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("starflow-3b") && message.contains("write to"), "{message}");
}

#[cfg(unix)]
#[test]
fn read_only_target_folder_is_named() {
    use std::os::unix::fs::PermissionsExt;

    let hub = FakeHub::start(release());
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("read-only");
    std::fs::create_dir(&model).expect("model folder");
    std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    if std::fs::write(model.join("probe"), b"").is_ok() {
        // Root ignores permissions; the test above covers an unwritable folder then.
        eprintln!("read_only_target_folder_is_named: running as root, permissions not enforced");
        return;
    }
    let options = DownloadOptions { parts: vec![Part::Flow], ..hub.options() };

    let error = download_release(&model, &options).expect_err("read-only");

    std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(matches!(error, DownloadError::Write { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("writable") && message.contains("read-only"), "{message}");
}

#[cfg(target_os = "linux")]
#[test]
fn full_disk_is_reported_with_the_path() {
    let hub = FakeHub::start(release());
    let dir = tempfile::tempdir().expect("temp dir");
    // /dev/full fails every write with ENOSPC, as a full disk does.
    let part = dir.path().join("starflow_3B_t2i_256x256.pth.part");
    std::os::unix::fs::symlink("/dev/full", &part).expect("symlink to /dev/full");
    let options = DownloadOptions { parts: vec![Part::Flow], ..hub.options() };

    let error = download_release(dir.path(), &options).expect_err("disk full");

    assert!(matches!(error, DownloadError::DiskFull { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("disk is full") && message.contains(".pth.part"), "{message}");
    assert!(!local(dir.path(), FLOW).exists());
}

#[test]
fn shard_index_pointing_outside_the_folder_is_refused() {
    let index = r#"{"weight_map": {"shared.weight": "../../escaped.safetensors"}}"#;
    let hub = FakeHub::start(with(release(), T5_INDEX, |file| *file = git(index)));
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model");
    let options = DownloadOptions { parts: vec![Part::TextEncoder], ..hub.options() };

    let error = download_release(&model, &options).expect_err("escaping shard");

    assert!(matches!(error, DownloadError::Index { .. }), "{error}");
    assert!(error.to_string().contains("escaped.safetensors"), "{error}");
    assert!(!dir.path().join("escaped.safetensors").exists());
}
