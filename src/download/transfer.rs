//! Fetching one file: HEAD for its size and sha256, GET with `Range` into `FILE.part`, bounded
//! retries, verification, and the rename to `FILE` (see the docs of [`super`]).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::config::RedirectAuthHeaders;
use ureq::http::{HeaderMap, Response};
use ureq::{Agent, Body};

use super::{
    DownloadError, DownloadOptions, FileAction, FileReport, PartSource, REVISION, Verification,
};

/// Same-host redirects a HEAD request follows (a repository renamed more than once).
const MAX_HEAD_REDIRECTS: usize = 5;

/// What the HEAD request announced about a file.
struct Announced {
    size_bytes: Option<u64>,
    sha256: Option<String>,
}

pub(super) struct Client<'a> {
    agent: Agent,
    options: &'a DownloadOptions,
}

impl<'a> Client<'a> {
    pub(super) fn new(options: &'a DownloadOptions) -> Self {
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
    pub(super) fn fetch(
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
}
