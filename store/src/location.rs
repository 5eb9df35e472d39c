//! Byte-range access to local files and object-store objects, behind one trait, and one
//! location type for local paths and object-store URLs.
//!
//! Datasets read rows with small range reads (`pread` locally, ranged GETs on object stores),
//! so memory use does not grow with the dataset. URLs with a scheme (`file://`, `s3://`,
//! `gs://`, `az://`, `memory://`) go through the `object_store` crate with credentials from
//! each cloud's standard environment variables; plain paths are local files.
//!
//! Every question asked of a store returns a `Result`: "does this exist" is `Ok(false)` only
//! when the store said so, never because a request failed.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::StoreError;

/// Random access to the bytes of one file or object.
pub trait ByteSource: Send + Sync + std::fmt::Debug {
    /// Returns the total size in bytes.
    fn len(&self) -> u64;
    /// Returns true for an empty file.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `range`; fewer bytes than asked is an error (a truncated file).
    ///
    /// # Errors
    /// IO failures and short reads, naming the source.
    fn read(&self, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// Returns the name used in error messages.
    fn name(&self) -> &str;
}

/// Refuses a read past the end of a source of `len` bytes: a truncated file.
fn within(name: &str, range: &Range<u64>, len: u64) -> Result<(), StoreError> {
    if range.end > len {
        return Err(StoreError::Truncated {
            name: name.to_string(),
            want: range.end,
            len,
        });
    }
    Ok(())
}

/// A local file read with `pread`.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    len: u64,
    name: String,
}

impl LocalFile {
    /// Opens `path`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| StoreError::io(&name, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&name, e))?.len();
        Ok(Self { file, len, name })
    }
}

impl ByteSource for LocalFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        within(&self.name, &range, self.len)?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.file
            .read_exact_at(&mut buf, range.start)
            .map_err(|e| StoreError::io(&self.name, e))?;
        Ok(Bytes::from(buf))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// Returns the process-wide runtime used to drive object-store IO from synchronous code.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("elf-io")
            .enable_all()
            .build()
            .expect("tokio runtime starts")
    })
}

/// An object in an object store.
#[derive(Debug)]
pub struct StoreObject {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    len: u64,
    name: String,
}

impl ByteSource for StoreObject {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        within(&self.name, &range, self.len)?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let store = self.store.clone();
        let path = self.path.clone();
        runtime()
            .block_on(async move { store.get_range(&path, range).await })
            .map_err(|e| StoreError::store(&self.name, e))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// Where a file, folder, object or prefix lives: a local path or an object store.
#[derive(Debug, Clone)]
pub enum Location {
    /// A local file or folder.
    Local(PathBuf),
    /// An object-store prefix or object.
    Store {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// The object or prefix inside it.
        path: StorePath,
        /// The URL, for messages.
        url: String,
    },
}

/// Builds an object store for a URL, reading credentials from the environment.
///
/// # Errors
/// An unsupported scheme or a builder error, naming the URL.
pub fn store_for_url(url: &url::Url) -> Result<(Arc<dyn ObjectStore>, StorePath), StoreError> {
    let bad = |message: String| StoreError::Url {
        url: url.to_string(),
        message,
    };
    // `memory://NAME/...`: the name is a bucket, as in the cloud schemes, so two memory roots
    // of one process never share paths.
    let path = match (url.scheme(), url.host_str()) {
        ("memory", Some(host)) => format!("/{host}{}", url.path()),
        _ => url.path().to_string(),
    };
    let path = StorePath::from_url_path(&path).map_err(|e| bad(e.to_string()))?;
    // Bounded retries and timeouts: a store outage must surface as an error in seconds (a
    // failed save is reported and training goes on), not block an upload for minutes.
    let retry = object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(20),
        ..Default::default()
    };
    // Replacing the client options also replaces what `from_env` read, so carry the one
    // client setting the environment commonly sets (plain-HTTP endpoints such as MinIO or moto).
    let allow_http = ["AWS_ALLOW_HTTP", "GOOGLE_ALLOW_HTTP", "AZURE_ALLOW_HTTP"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1"));
    let client = object_store::ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(std::time::Duration::from_secs(3))
        .with_timeout(std::time::Duration::from_secs(300));
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .with_retry(retry.clone())
                .with_client_options(client.clone())
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry.clone())
                .with_client_options(client.clone())
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        "az" | "azure" | "abfs" | "abfss" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry.clone())
                .with_client_options(client.clone())
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        "file" => Arc::new(object_store::local::LocalFileSystem::new()),
        "memory" => memory_store(),
        other => {
            return Err(bad(format!(
                "unsupported URL scheme {other:?} (use file, s3, gs, az or memory)"
            )));
        }
    };
    Ok((store, path))
}

/// Returns the process-wide in-memory store behind `memory://` URLs.
pub fn memory_store() -> Arc<dyn ObjectStore> {
    static MEM: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    MEM.get_or_init(|| Arc::new(object_store::memory::InMemory::new()))
        .clone()
}

/// Maps "the store said: no such object" to `Ok(false)`, a found object to `Ok(true)`, and
/// every other answer to the error it is.
fn found<T>(r: Result<T, StoreError>) -> Result<bool, StoreError> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

impl Location {
    /// Parses a path or URL.
    ///
    /// # Errors
    /// A malformed URL or an unsupported scheme.
    pub fn parse(spec: &str) -> Result<Self, StoreError> {
        if !spec.contains("://") {
            return Ok(Self::Local(PathBuf::from(spec)));
        }
        let url = url::Url::parse(spec).map_err(|e| StoreError::Url {
            url: spec.into(),
            message: e.to_string(),
        })?;
        let (store, path) = store_for_url(&url)?;
        Ok(Self::Store {
            store,
            path,
            url: spec.trim_end_matches('/').to_string(),
        })
    }

    /// Returns a location inside `store` (tests use it with wrapped stores).
    pub fn in_store(store: Arc<dyn ObjectStore>, path: &str, url: &str) -> Self {
        Self::Store {
            store,
            path: StorePath::from(path),
            url: url.trim_end_matches('/').to_string(),
        }
    }

    /// Returns the location for display.
    pub fn display(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::Store { url, .. } => url.clone(),
        }
    }

    /// Returns a child location.
    pub fn join(&self, name: &str) -> Self {
        match self {
            Self::Local(p) => Self::Local(p.join(name)),
            Self::Store { store, path, url } => Self::Store {
                store: store.clone(),
                path: path.clone().join(name),
                url: format!("{url}/{name}"),
            },
        }
    }

    /// Returns the last path segment.
    pub fn file_name(&self) -> String {
        match self {
            Self::Local(p) => p
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
            Self::Store { path, .. } => path.filename().unwrap_or_default().to_string(),
        }
    }

    /// Returns whether the location names an existing folder (or a non-empty prefix).
    ///
    /// # Errors
    /// A failed request: the answer is unknown, not "no".
    pub fn is_dir(&self) -> Result<bool, StoreError> {
        match self {
            Self::Local(p) => match std::fs::metadata(p) {
                Ok(m) => Ok(m.is_dir()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StoreError::io(p.display().to_string(), e)),
            },
            Self::Store { .. } => Ok(!self.list()?.is_empty()),
        }
    }

    /// Returns whether the location names an existing file or object.
    ///
    /// # Errors
    /// A failed request: the answer is unknown, not "no".
    pub fn exists(&self) -> Result<bool, StoreError> {
        match self {
            Self::Local(p) => {
                found(std::fs::metadata(p).map_err(|e| StoreError::io(p.display().to_string(), e)))
            }
            Self::Store { store, path, url } => {
                let (s, p) = (store.clone(), path.clone());
                found(
                    runtime()
                        .block_on(async move { s.head(&p).await })
                        .map_err(|e| StoreError::store(url, e)),
                )
            }
        }
    }

    /// Lists the names of the entries directly inside a folder, sorted; a folder that does not
    /// exist lists as empty (a store has no folders, only prefixes).
    ///
    /// # Errors
    /// IO or store errors.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names = match self {
            Self::Local(p) => {
                let name = p.display().to_string();
                let entries = match std::fs::read_dir(p) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
                    Err(e) => return Err(StoreError::io(name, e)),
                };
                let mut out = vec![];
                for e in entries {
                    let e = e.map_err(|e| StoreError::io(&name, e))?;
                    out.push(e.file_name().to_string_lossy().to_string());
                }
                out
            }
            Self::Store { store, path, url } => {
                let (s, p) = (store.clone(), path.clone());
                let listed = runtime()
                    .block_on(async move { s.list_with_delimiter(Some(&p)).await })
                    .map_err(|e| StoreError::store(url, e))?;
                listed
                    .objects
                    .iter()
                    .filter_map(|o| o.location.filename().map(str::to_string))
                    .chain(
                        listed
                            .common_prefixes
                            .iter()
                            .filter_map(|p| p.filename().map(str::to_string)),
                    )
                    .collect()
            }
        };
        names.sort();
        Ok(names)
    }

    /// Opens the file or object for range reads.
    ///
    /// # Errors
    /// Missing files or store errors.
    pub fn open(&self) -> Result<Arc<dyn ByteSource>, StoreError> {
        match self {
            Self::Local(p) => Ok(Arc::new(LocalFile::open(p)?)),
            Self::Store { store, path, url } => {
                let (s, p) = (store.clone(), path.clone());
                let meta = runtime()
                    .block_on(async move { s.head(&p).await })
                    .map_err(|e| StoreError::store(url, e))?;
                Ok(Arc::new(StoreObject {
                    store: store.clone(),
                    path: path.clone(),
                    len: meta.size,
                    name: url.clone(),
                }))
            }
        }
    }

    /// Writes a whole file or object atomically: a local file is written beside its final name
    /// and renamed; an object-store PUT is atomic by itself.
    ///
    /// # Errors
    /// IO or store errors, naming the location.
    pub fn put(&self, bytes: impl Into<bytes::Bytes>) -> Result<(), StoreError> {
        let bytes: bytes::Bytes = bytes.into();
        match self {
            Self::Local(_) => self.put_with(&|w| std::io::Write::write_all(w, &bytes)),
            Self::Store { store, path, url } => {
                let (s, p) = (store.clone(), path.clone());
                runtime()
                    .block_on(async move { s.put(&p, bytes.into()).await })
                    .map(|_| ())
                    .map_err(|e| StoreError::store(url, e))
            }
        }
    }

    /// Writes an object produced by `write`, streamed into place for a local path (data on the
    /// disk before the name appears), buffered then put for an object store.
    ///
    /// # Errors
    /// IO or store errors, naming the object.
    pub fn put_with(
        &self,
        write: &dyn Fn(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        match self {
            Self::Local(p) => {
                let name = p.display().to_string();
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(&name, e))?;
                }
                // A writer-unique temporary name: two writers of one object (a retry beside a
                // late upload) never interleave in one file; the last rename wins whole.
                static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let tmp = p.with_file_name(format!(
                    ".{}.{}-{}.partial",
                    p.file_name()
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_default(),
                    std::process::id(),
                    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                // Durable before visible: the data reaches the disk before the rename
                // publishes it, so a crash never leaves a complete-looking partial file.
                let run = || -> std::io::Result<()> {
                    let mut f = std::fs::File::create(&tmp)?;
                    write(&mut f)?;
                    f.sync_all()
                };
                run().map_err(|e| StoreError::io(&name, e))?;
                std::fs::rename(&tmp, p).map_err(|e| StoreError::io(&name, e))
            }
            Self::Store { .. } => {
                let mut buf = Vec::new();
                write(&mut buf).map_err(|e| StoreError::io(self.display(), e))?;
                self.put(buf)
            }
        }
    }

    /// Deletes a folder (or every object under a prefix); a missing one is not an error.
    ///
    /// # Errors
    /// IO or store errors.
    pub fn delete_all(&self) -> Result<(), StoreError> {
        match self {
            Self::Local(p) => match std::fs::remove_dir_all(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(StoreError::io(p.display().to_string(), e))
                }
                _ => Ok(()),
            },
            Self::Store { store, path, url } => {
                for n in list_recursive(store.clone(), path.clone(), url)? {
                    let (s, p) = (store.clone(), StorePath::from(n));
                    runtime()
                        .block_on(async move { s.delete(&p).await })
                        .map_err(|e| StoreError::store(url, e))?;
                }
                Ok(())
            }
        }
    }

    /// Reads a whole (small) file or object.
    ///
    /// # Errors
    /// As [`Location::open`].
    pub fn read_all(&self) -> Result<Bytes, StoreError> {
        let src = self.open()?;
        src.read(0..src.len())
    }
}

/// Copies a local folder tree into an object store under `url` (used by tests and tools).
///
/// # Errors
/// IO or store errors.
pub fn upload_dir(local: &Path, url: &str) -> Result<(), StoreError> {
    let Location::Store { store, path, url } = Location::parse(url)? else {
        return Err(StoreError::Url {
            url: url.into(),
            message: "not an object-store URL".into(),
        });
    };
    let mut stack = vec![(local.to_path_buf(), path)];
    while let Some((dir, prefix)) = stack.pop() {
        let name = dir.display().to_string();
        for e in std::fs::read_dir(&dir).map_err(|e| StoreError::io(&name, e))? {
            let e = e.map_err(|e| StoreError::io(&name, e))?;
            let child = prefix
                .clone()
                .join(e.file_name().to_string_lossy().as_ref());
            let ty = e.file_type().map_err(|err| StoreError::io(&name, err))?;
            if ty.is_dir() {
                stack.push((e.path(), child));
            } else {
                let data = std::fs::read(e.path())
                    .map_err(|err| StoreError::io(e.path().display().to_string(), err))?;
                let s = store.clone();
                runtime()
                    .block_on(async move { s.put(&child, data.into()).await })
                    .map_err(|err| StoreError::store(&url, err))?;
            }
        }
    }
    Ok(())
}

/// Lists every object under a prefix (recursively).
///
/// # Errors
/// Store errors, naming `url`.
pub fn list_recursive(
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: &str,
) -> Result<Vec<String>, StoreError> {
    let objs: Vec<_> = runtime()
        .block_on(async move { store.list(Some(&prefix)).try_collect::<Vec<_>>().await })
        .map_err(|e| StoreError::store(url, e))?;
    Ok(objs.into_iter().map(|o| o.location.to_string()).collect())
}
