//! `starflow-studio download`: fetch the released STARFlow 3B pipeline from the Hugging Face Hub
//! into the model-directory layout that `generate --model DIR` reads:
//!
//! ```text
//! DIR/starflow_3B_t2i_256x256.pth    the flow (apple/starflow)
//! DIR/text_encoder/                  config.json, tokenizer.json, model.safetensors.index.json
//!                                    and the shards it lists (google/flan-t5-xl)
//! DIR/vae/                           config.json, diffusion_pytorch_model.safetensors
//!                                    (stabilityai/sd-vae-ft-ema)
//! ```
//!
//! Each file is fetched from `{endpoint}/{repo}/resolve/{revision}/{file}` as the Hub's own
//! clients do: a HEAD request (redirects not followed) gives the expected size and checksum, then
//! a GET (redirects followed, to the Hub's CDN) streams the bytes into `FILE.part`, which is
//! renamed to `FILE` only once verified. An interrupted transfer is resumed with an HTTP `Range`
//! request, within the same run (a bounded number of tries) and in a later run from the `.part`
//! file left behind.
//!
//! # What is verified
//! - Files stored with Git LFS (all the weights) are announced with an `X-Linked-Etag` (or
//!   `ETag`) holding the sha256 of their content. When the tag is 64 hex digits, the sha256 of
//!   the finished file must equal it, and its size must equal `X-Linked-Size`.
//! - Small files kept in git itself (`config.json`, `tokenizer.json`, the shard index) carry a
//!   git blob id instead, which is no sha256 of the content, so only their size is checked
//!   against `Content-Length`.
//! - A server that gives neither is trusted as is; the report says so (`Verification::None`).
//! - A final file that already exists with the announced size counts as complete and is not
//!   hashed again: it was verified when it was written (or placed there by the user).
//!
//! A file that fails its check is deleted, `.part` included, so the next run starts it afresh.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IsTerminal, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::config::RedirectAuthHeaders;
use ureq::http::{HeaderMap, Response};
use ureq::{Agent, Body};

/// The Hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The git revision every file is fetched at.
pub const REVISION: &str = "main";

/// Same-host redirects a HEAD request follows (a repository renamed more than once).
const MAX_HEAD_REDIRECTS: usize = 5;

/// Where each part of the released pipeline comes from: repository, the files fetched from it
/// and the folder (under the model directory) they go to.
///
/// These names could not be checked against the live Hub when this was written (no internet on
/// the build machine): in particular the file list of `apple/starflow` is taken from the
/// official code's documentation. If a release is renamed, correct it here; nothing else in the
/// crate spells these names.
pub const RELEASE: [PartSource; 3] = [
    PartSource {
        part: Part::Flow,
        repo: "apple/starflow",
        folder: "",
        files: &["starflow_3B_t2i_256x256.pth"],
        shard_index: None,
    },
    PartSource {
        part: Part::TextEncoder,
        repo: "google/flan-t5-xl",
        folder: "text_encoder",
        files: &["config.json", "tokenizer.json", "model.safetensors.index.json"],
        shard_index: Some("model.safetensors.index.json"),
    },
    PartSource {
        part: Part::Vae,
        repo: "stabilityai/sd-vae-ft-ema",
        folder: "vae",
        files: &["config.json", "diffusion_pytorch_model.safetensors"],
        shard_index: None,
    },
];

/// One of the three downloadable parts of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Flow,
    TextEncoder,
    Vae,
}

/// Where one part comes from (see [`RELEASE`]).
#[derive(Debug, Clone, Copy)]
pub struct PartSource {
    pub part: Part,
    /// `owner/name` on the Hub.
    pub repo: &'static str,
    /// Folder under the model directory; `""` for the top level.
    pub folder: &'static str,
    /// Files fetched by name, in this order.
    pub files: &'static [&'static str],
    /// One of `files`: a safetensors index whose `weight_map` names the shards to fetch next.
    pub shard_index: Option<&'static str>,
}

/// What to download and how.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Base URL of the Hub, without a trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Access token sent as `Authorization: Bearer` (`HF_TOKEN`); gated repositories need one.
    pub token: Option<String>,
    /// Which parts to fetch, in this order.
    pub parts: Vec<Part>,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Tries per file before a failing connection is reported; each try resumes the last.
    pub attempts: u32,
    /// Pause before the second try; doubled before each later one.
    pub retry_delay: Duration,
    /// Longest wait to connect, for response headers, and between two reads of a body.
    pub stall_timeout: Duration,
    /// Use the proxy named by `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` (and `NO_PROXY`).
    pub proxy_from_env: bool,
}

/// What [`download_release`] did, file by file.
#[derive(Debug, Clone, Default)]
pub struct DownloadReport {
    pub files: Vec<FileReport>,
}

#[derive(Debug, Clone)]
pub struct FileReport {
    pub part: Part,
    pub repo: String,
    /// The file's name in its repository.
    pub file: String,
    /// Where it now lies.
    pub path: PathBuf,
    pub size_bytes: u64,
    pub action: FileAction,
    pub verification: Verification,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    /// The file was present with the announced size; nothing was fetched.
    AlreadyComplete,
    /// The file was fetched; `resumed_from_bytes` is the length of a `.part` left by an earlier
    /// run, and `tries` counts the requests this run needed (more than 1 after a cut).
    Downloaded { resumed_from_bytes: u64, tries: u32 },
}

/// How a file was checked (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Sha256,
    Size,
    None,
}

/// What can go wrong while downloading.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "The server could not be reached: {reason}. Check the internet connection, a proxy, or \
         HF_ENDPOINT; run download again to continue where it stopped. (url: {url})"
    )]
    Network { url: String, reason: String },
    #[error("{repo} refused access to {file:?} (HTTP {status}). {hint} (url: {url})")]
    Unauthorized { status: u16, repo: String, file: String, hint: &'static str, url: String },
    #[error(
        "{repo} has no file {file:?} (HTTP 404{what}). The release may have been renamed: \
         correct download::RELEASE or fetch the file by hand. (url: {url})"
    )]
    NotFound { repo: String, file: String, what: &'static str, url: String },
    #[error("The server answered HTTP {status} for {file:?}; try again later. (url: {url})")]
    Status { status: u16, file: String, url: String },
    #[error(
        "The transfer stopped after {received} of {expected} bytes in {tries} tries: {reason}. \
         Run download again; it resumes from the partial file. (file: {path:?})"
    )]
    Interrupted { path: PathBuf, received: u64, expected: String, tries: u32, reason: String },
    #[error(
        "The downloaded file has {found} bytes, but the server announced {expected}; it was \
         deleted. Run download again. (file: {path:?})"
    )]
    SizeMismatch { path: PathBuf, expected: u64, found: u64 },
    #[error(
        "The downloaded file's sha256 is {found}, but the server announced {expected}: it is \
         corrupt and was deleted. Run download again. (file: {path:?})"
    )]
    ChecksumMismatch { path: PathBuf, expected: String, found: String },
    // TODO(#3): no free-space check before a transfer starts; the user learns of a full disk
    // mid-file (the transfer resumes once space is freed).
    #[error(
        "The disk is full. Free some space and run download again; it resumes where it \
         stopped. (file: {path:?})"
    )]
    DiskFull { path: PathBuf },
    #[error(
        "The folder could not be created: {error}. Pick a folder you can write to. \
         (folder: {path:?})"
    )]
    Folder { path: PathBuf, error: std::io::Error },
    #[error(
        "The file could not be written: {error}. Check that its folder is writable. \
         (file: {path:?})"
    )]
    Write { path: PathBuf, error: std::io::Error },
    #[error(
        "The partial download could not be read: {error}. Delete it and run download again. \
         (file: {path:?})"
    )]
    ReadPart { path: PathBuf, error: std::io::Error },
    #[error(
        "The shard index could not be used: {reason}. Delete it and run download again. \
         (file: {path:?})"
    )]
    Index { path: PathBuf, reason: String },
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Flow, Part::TextEncoder, Part::Vae];

    /// The name used on the command line: `flow`, `text-encoder`, `vae`.
    pub fn name(self) -> &'static str {
        match self {
            Part::Flow => "flow",
            Part::TextEncoder => "text-encoder",
            Part::Vae => "vae",
        }
    }

    pub fn source(self) -> &'static PartSource {
        RELEASE
            .iter()
            .find(|source| source.part == self)
            .expect("RELEASE lists every Part exactly once")
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Part {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Part::ALL.into_iter().find(|part| part.name() == name).ok_or_else(|| {
            format!("unknown part {name:?}; expected one of flow, text-encoder, vae")
        })
    }
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            parts: Part::ALL.to_vec(),
            progress: true,
            attempts: 5,
            retry_delay: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(60),
            proxy_from_env: true,
        }
    }
}

impl DownloadOptions {
    /// The defaults, with the endpoint from `HF_ENDPOINT` and the token from `HF_TOKEN` (empty
    /// values count as unset).
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|value: &String| !value.is_empty());
        let mut options = Self::default();
        if let Some(endpoint) = var("HF_ENDPOINT") {
            options.endpoint = endpoint;
        }
        options.token = var("HF_TOKEN");
        options
    }
}

impl DownloadReport {
    /// Bytes fetched over the network in this run.
    pub fn bytes_fetched(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|file| match file.action {
                FileAction::Downloaded { resumed_from_bytes, .. } => {
                    Some(file.size_bytes - resumed_from_bytes)
                }
                FileAction::AlreadyComplete => None,
            })
            .sum()
    }
}

/// Fetch `options.parts` of the release into `dir` (created if missing), skipping files that
/// are already complete. See the module docs for the layout and what is verified.
///
/// Blocking: run it off the UI thread.
// TODO(#3): progress goes to the terminal only; the app's model picker needs a progress
// callback and a cancel flag before it can offer downloads.
// TODO(#3): every file is fetched at `main`; pinning the commit of the first file's
// `X-Repo-Commit` would keep the files of one repository from mixing revisions.
pub fn download_release(
    dir: &Path,
    options: &DownloadOptions,
) -> Result<DownloadReport, DownloadError> {
    let client = Client::new(options);
    let mut report = DownloadReport::default();
    for part in &options.parts {
        let source = part.source();
        let folder = dir.join(source.folder);
        std::fs::create_dir_all(&folder)
            .map_err(|error| DownloadError::Folder { path: folder.clone(), error })?;

        for file in source.files {
            report.files.push(client.fetch(source, file, &folder.join(file))?);
        }

        if let Some(index) = source.shard_index {
            for shard in shard_names(&folder.join(index))? {
                report.files.push(client.fetch(source, &shard, &folder.join(&shard))?);
            }
        }
    }
    Ok(report)
}

/// What the HEAD request announced about a file.
struct Announced {
    size_bytes: Option<u64>,
    sha256: Option<String>,
}

struct Client<'a> {
    agent: Agent,
    options: &'a DownloadOptions,
}

impl<'a> Client<'a> {
    fn new(options: &'a DownloadOptions) -> Self {
        let stall = Some(options.stall_timeout);
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(10)
            // Signed CDN links must not receive the Hub token; same-host redirects (renamed
            // repositories) still need it.
            .redirect_auth_headers(RedirectAuthHeaders::SameHost)
            .user_agent(format!("starflow-studio/{}", env!("CARGO_PKG_VERSION")))
            // Sizes are compared with Content-Length, which must be that of the bytes as stored.
            .accept_encoding("identity")
            .timeout_connect(stall)
            .timeout_recv_response(stall)
            .timeout_per_read(stall)
            .proxy(if options.proxy_from_env { ureq::Proxy::try_from_env() } else { None })
            .build();
        Self { agent: config.into(), options }
    }

    /// Wait before try number `next_try` (2 or more): `retry_delay`, doubled each time up to 64x.
    fn pause_before_try(&self, next_try: u32) {
        let doublings = next_try.saturating_sub(2).min(6);
        std::thread::sleep(self.options.retry_delay.saturating_mul(1 << doublings));
    }

    fn url(&self, repo: &str, file: &str) -> String {
        let endpoint = self.options.endpoint.trim_end_matches('/');
        format!("{endpoint}/{repo}/resolve/{REVISION}/{file}")
    }

    /// Make `target` a verified copy of `file` in `source.repo`.
    fn fetch(
        &self,
        source: &PartSource,
        file: &str,
        target: &Path,
    ) -> Result<FileReport, DownloadError> {
        let url = self.url(source.repo, file);
        let announced = self.head(source.repo, file, &url)?;
        let verification = match (&announced.sha256, announced.size_bytes) {
            (Some(_), _) => Verification::Sha256,
            (None, Some(_)) => Verification::Size,
            (None, None) => Verification::None,
        };
        if verification == Verification::None {
            log::warn!("{url} announced neither size nor sha256; the file cannot be checked");
        }
        let report = |size_bytes, action| FileReport {
            part: source.part,
            repo: source.repo.to_string(),
            file: file.to_string(),
            path: target.to_path_buf(),
            size_bytes,
            action,
            verification,
        };

        if let (Some(size), Ok(meta)) = (announced.size_bytes, std::fs::metadata(target))
            && meta.is_file()
            && meta.len() == size
        {
            log::debug!("{target:?} is complete ({size} bytes); skipped");
            return Ok(report(size, FileAction::AlreadyComplete));
        }

        let part = part_path(target);
        let (size_bytes, resumed_from_bytes, tries) =
            self.fetch_part(source.repo, file, &url, &part, &announced)?;
        std::fs::rename(&part, target).map_err(|error| write_error(target, error))?;
        log::info!("Downloaded {}/{file} ({size_bytes} bytes) to {target:?}", source.repo);
        Ok(report(size_bytes, FileAction::Downloaded { resumed_from_bytes, tries }))
    }

    /// Size and checksum from a HEAD request, following only same-host redirects that carry no
    /// metadata (a renamed repository), as the Hub's Python client does.
    fn head(&self, repo: &str, file: &str, url: &str) -> Result<Announced, DownloadError> {
        let mut url = url.to_string();
        let mut status = 0;
        for _hop in 0..MAX_HEAD_REDIRECTS {
            let response = self.with_retries(&url, || {
                let mut request = self.agent.head(&url);
                if let Some(token) = &self.options.token {
                    request = request.header("Authorization", format!("Bearer {token}"));
                }
                request.config().max_redirects(0).build().call()
            })?;
            status = response.status().as_u16();
            let headers = response.headers();
            let linked_etag = header(headers, "x-linked-etag");
            let location = header(headers, "location").filter(|location| location.starts_with('/'));
            if (300..400).contains(&status)
                && linked_etag.is_none()
                && let Some(location) = location
            {
                url = format!("{}{location}", self.options.endpoint.trim_end_matches('/'));
                continue;
            }
            if !(200..400).contains(&status) {
                return Err(self.status_error(status, headers, repo, file, &url));
            }

            // A redirect's own Content-Length is that of its empty body, not of the file.
            let etag = linked_etag.or_else(|| header(headers, "etag"));
            let size = header(headers, "x-linked-size")
                .or_else(|| (status < 300).then(|| header(headers, "content-length")).flatten());
            return Ok(Announced {
                size_bytes: size.and_then(|size| size.trim().parse().ok()),
                sha256: etag.as_deref().and_then(sha256_from_etag),
            });
        }
        Err(DownloadError::Status { status, file: file.to_string(), url })
    }

    /// Fill `part` with the whole file, resuming what is there, then verify it. Returns the
    /// final size, the length the `.part` had before, and the number of requests made.
    fn fetch_part(
        &self,
        repo: &str,
        file: &str,
        url: &str,
        part: &Path,
        announced: &Announced,
    ) -> Result<(u64, u64, u32), DownloadError> {
        let mut partial = PartialFile::open(part, announced.size_bytes)?;
        let resumed_from_bytes = partial.len;
        let mut bar = Progress::new(self.options.progress, file, announced.size_bytes);
        bar.set(partial.len);

        let attempts = self.options.attempts.max(1);
        let mut tries = 0;
        let mut complete = announced.size_bytes == Some(partial.len);
        let mut last_failure = String::new();
        while !complete && tries < attempts {
            if tries > 0 {
                self.pause_before_try(tries + 1);
            }
            tries += 1;
            match self.receive(repo, file, url, &mut partial, announced, &mut bar)? {
                Received::Complete => complete = true,
                Received::Cut(reason) => {
                    log::warn!(
                        "Transfer of {url} cut at {} bytes: {reason}; resuming",
                        partial.len
                    );
                    last_failure = reason;
                }
            }
        }
        bar.finish();

        if !complete {
            return Err(DownloadError::Interrupted {
                path: part.to_path_buf(),
                received: partial.len,
                expected: announced.size_bytes.map_or("?".into(), |size| size.to_string()),
                tries,
                reason: last_failure,
            });
        }
        let size_bytes = partial.finish(announced)?;
        Ok((size_bytes, resumed_from_bytes, tries))
    }

    /// One GET from `partial.len` on. A connection that breaks mid-body is `Cut`; a status the
    /// server won't change its mind about is an error.
    fn receive(
        &self,
        repo: &str,
        file: &str,
        url: &str,
        partial: &mut PartialFile,
        announced: &Announced,
        bar: &mut Progress,
    ) -> Result<Received, DownloadError> {
        let offset = partial.len;
        let response = match self.get(url, offset) {
            Ok(response) => response,
            Err(reason) => return Ok(Received::Cut(reason)),
        };
        let status = response.status().as_u16();
        match status {
            206 => {
                let start = header(response.headers(), "content-range")
                    .as_deref()
                    .and_then(content_range_start);
                if start != Some(offset) {
                    partial.restart()?;
                    return Ok(Received::Cut(format!("the server resumed at {start:?}")));
                }
            }
            // The server ignored the Range header: start over.
            200 if offset > 0 => partial.restart()?,
            200 => {}
            // Nothing after `offset`: the part is complete if the announced size says so.
            416 if announced.size_bytes.is_none_or(|size| size == offset) => {
                return Ok(Received::Complete);
            }
            416 => {
                partial.restart()?;
                return Ok(Received::Cut("the partial file is longer than the file".into()));
            }
            500..=599 => return Ok(Received::Cut(format!("HTTP {status}"))),
            _ => return Err(self.status_error(status, response.headers(), repo, file, url)),
        }

        let mut body = response.into_body().into_reader();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = match body.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Ok(Received::Cut(error.to_string())),
            };
            partial.append(&buffer[..read])?;
            bar.set(partial.len);
        }

        match announced.size_bytes {
            Some(size) if partial.len < size => {
                Ok(Received::Cut(format!("the connection closed at {} bytes", partial.len)))
            }
            _ => Ok(Received::Complete),
        }
    }

    /// A GET from byte `offset`, following redirects; transport failures come back as text.
    fn get(&self, url: &str, offset: u64) -> Result<Response<Body>, String> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.options.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        request.call().map_err(|error| error.to_string())
    }

    /// Run `call`, retrying transport failures and 5xx answers up to `attempts` times.
    fn with_retries(
        &self,
        url: &str,
        call: impl Fn() -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, DownloadError> {
        let attempts = self.options.attempts.max(1);
        let mut tries = 0;
        loop {
            if tries > 0 {
                self.pause_before_try(tries + 1);
            }
            tries += 1;
            match call() {
                Ok(response) if response.status().is_server_error() && tries < attempts => {
                    log::warn!("HTTP {} from {url}; retrying", response.status().as_u16());
                }
                Ok(response) => return Ok(response),
                Err(error) if tries < attempts => log::warn!("{url}: {error}; retrying"),
                Err(error) => {
                    return Err(DownloadError::Network {
                        url: url.to_string(),
                        reason: error.to_string(),
                    });
                }
            }
        }
    }

    fn status_error(
        &self,
        status: u16,
        headers: &HeaderMap,
        repo: &str,
        file: &str,
        url: &str,
    ) -> DownloadError {
        let code = header(headers, "x-error-code").unwrap_or_default();
        let (repo, file, url) = (repo.to_string(), file.to_string(), url.to_string());
        match status {
            401 | 403 => {
                let hint = match (&self.options.token, code.as_str()) {
                    (None, _) => {
                        "The repository is gated or private: accept its terms on its Hub page, \
                         create an access token in your Hub settings and set HF_TOKEN to it."
                    }
                    (Some(_), "GatedRepo") => {
                        "The token in HF_TOKEN works but its account has not accepted this \
                         repository's terms yet: accept them on its Hub page."
                    }
                    (Some(_), _) => {
                        "The token in HF_TOKEN does not grant access: check that it is valid \
                         and that its account may read this repository."
                    }
                };
                DownloadError::Unauthorized { status, repo, file, hint, url }
            }
            404 => {
                let what = match code.as_str() {
                    "RepoNotFound" => ": no such repository",
                    "EntryNotFound" => ": no such file",
                    "RevisionNotFound" => ": no such revision",
                    _ => "",
                };
                DownloadError::NotFound { repo, file, what, url }
            }
            _ => DownloadError::Status { status, file, url },
        }
    }
}

/// How one GET ended.
enum Received {
    Complete,
    Cut(String),
}

/// A `.part` file being filled, with the sha256 of what it holds so far.
struct PartialFile {
    path: PathBuf,
    file: File,
    len: u64,
    hasher: Sha256,
}

impl PartialFile {
    /// Open (or create) `path` for appending and hash what it already holds. A part longer than
    /// the announced size is truncated: it cannot be a prefix of the file.
    fn open(path: &Path, size_bytes: Option<u64>) -> Result<Self, DownloadError> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|error| write_error(path, error))?;
        let mut partial = Self { path: path.to_path_buf(), file, len: 0, hasher: Sha256::new() };

        let existing = partial
            .file
            .metadata()
            .map_err(|error| DownloadError::ReadPart { path: path.into(), error })?;
        if size_bytes.is_some_and(|size| existing.len() > size) {
            partial.restart()?;
            return Ok(partial);
        }

        // Read no more than the length seen: a device file would never end.
        let mut reader = (&partial.file).take(existing.len());
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(DownloadError::ReadPart { path: path.into(), error }),
            };
            partial.hasher.update(&buffer[..read]);
            partial.len += read as u64;
        }
        Ok(partial)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), DownloadError> {
        self.file.write_all(bytes).map_err(|error| write_error(&self.path, error))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn restart(&mut self) -> Result<(), DownloadError> {
        self.file.set_len(0).map_err(|error| write_error(&self.path, error))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Flush to disk and check the size and sha256; a file that fails is deleted.
    fn finish(self, announced: &Announced) -> Result<u64, DownloadError> {
        self.file.sync_all().map_err(|error| write_error(&self.path, error))?;
        drop(self.file);
        let found = hex(&self.hasher.finalize());
        let failure = match (announced.size_bytes, &announced.sha256) {
            (Some(expected), _) if expected != self.len => Some(DownloadError::SizeMismatch {
                path: self.path.clone(),
                expected,
                found: self.len,
            }),
            (_, Some(expected)) if *expected != found => Some(DownloadError::ChecksumMismatch {
                path: self.path.clone(),
                expected: expected.clone(),
                found,
            }),
            _ => None,
        };
        match failure {
            Some(error) => {
                if let Err(remove) = std::fs::remove_file(&self.path) {
                    log::warn!("Could not delete the failed download {:?}: {remove}", self.path);
                }
                Err(error)
            }
            None => Ok(self.len),
        }
    }
}

/// A byte progress bar on stderr, or nothing when it is off or stderr is no terminal.
struct Progress {
    bar: Option<pbr::ProgressBar<std::io::Stderr>>,
}

impl Progress {
    fn new(enabled: bool, file: &str, size_bytes: Option<u64>) -> Self {
        let bar = match size_bytes {
            Some(size) if enabled && std::io::stderr().is_terminal() => {
                let mut bar = pbr::ProgressBar::on(std::io::stderr(), size);
                bar.set_units(pbr::Units::Bytes);
                bar.set_max_refresh_rate(Some(Duration::from_millis(200)));
                bar.message(&format!("{file} "));
                Some(bar)
            }
            _ => None,
        };
        Self { bar }
    }

    fn set(&mut self, bytes: u64) {
        if let Some(bar) = &mut self.bar {
            bar.set(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &mut self.bar {
            bar.finish_println("");
        }
    }
}

/// The shard file names listed in a safetensors index's `weight_map`, each once, sorted.
fn shard_names(index: &Path) -> Result<Vec<String>, DownloadError> {
    let fail = |reason: String| DownloadError::Index { path: index.to_path_buf(), reason };
    let text = std::fs::read_to_string(index).map_err(|error| fail(error.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| fail(error.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|map| map.as_object())
        .ok_or_else(|| fail("it has no \"weight_map\" object".into()))?;

    let mut names = std::collections::BTreeSet::new();
    for value in map.values() {
        let name = value.as_str().ok_or_else(|| fail(format!("{value} is not a file name")))?;
        // A shard lies next to its index; anything else could write outside the model folder.
        let mut components = Path::new(name).components();
        let plain = matches!(components.next(), Some(Component::Normal(_)))
            && components.next().is_none()
            && !name.contains('\\');
        if !plain {
            return Err(fail(format!("{name:?} is not a plain file name")));
        }
        names.insert(name.to_string());
    }
    Ok(names.into_iter().collect())
}

/// `FILE.part` next to `FILE`.
fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

/// The sha256 an ETag holds, lowercase, or `None` when it holds something else (a git blob id).
fn sha256_from_etag(etag: &str) -> Option<String> {
    let tag = etag.trim().trim_start_matches("W/").trim_matches('"');
    let is_sha256 = tag.len() == 64 && tag.bytes().all(|byte| byte.is_ascii_hexdigit());
    is_sha256.then(|| tag.to_ascii_lowercase())
}

/// The first byte of `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A failed write: a full disk gets its own message.
fn write_error(path: &Path, error: std::io::Error) -> DownloadError {
    match error.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            DownloadError::DiskFull { path: path.to_path_buf() }
        }
        _ => DownloadError::Write { path: path.to_path_buf(), error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_with_sha256_is_recognized_in_any_quoting() {
        let sha = "a".repeat(64);
        assert_eq!(sha256_from_etag(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(sha256_from_etag(&format!("W/\"{}\"", sha.to_uppercase())), Some(sha.clone()));
        assert_eq!(sha256_from_etag(&sha), Some(sha));
    }

    #[test]
    fn etag_with_git_blob_id_is_no_sha256() {
        assert_eq!(sha256_from_etag("\"0123456789abcdef0123456789abcdef01234567\""), None);
        assert_eq!(sha256_from_etag(&format!("\"{}\"", "g".repeat(64))), None);
    }

    #[test]
    fn content_range_start_reads_the_first_byte() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn part_path_appends_to_the_file_name() {
        let part = part_path(Path::new("/m/vae/diffusion_pytorch_model.safetensors"));
        assert_eq!(part, Path::new("/m/vae/diffusion_pytorch_model.safetensors.part"));
    }

    #[test]
    fn part_names_round_trip() {
        for part in Part::ALL {
            assert_eq!(part.name().parse::<Part>(), Ok(part));
        }
        assert!("t5".parse::<Part>().is_err());
    }

    #[test]
    fn release_lists_every_part_once() {
        for part in Part::ALL {
            assert_eq!(RELEASE.iter().filter(|source| source.part == part).count(), 1);
        }
    }
}
