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
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use transfer::Client;

mod transfer;

/// The Hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The git revision every file is fetched at.
pub const REVISION: &str = "main";

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
         please report it, and fetch the file by hand from the repository page. (url: {url})"
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

#[cfg(test)]
mod tests {
    use super::*;

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
