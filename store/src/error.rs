//! The one error type of the storage layer: every variant names the file, object or URL, and
//! keeps the underlying cause as its `source`.

/// A storage failure, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file or folder operation failed.
    #[error("{name}: {source}")]
    Io {
        /// The path.
        name: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// An object-store request failed.
    #[error("{name}: object store: {source}")]
    Store {
        /// The URL.
        name: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A malformed URL, or a scheme no store serves.
    #[error("{url}: {message}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A read past the end of a file or object.
    #[error("{name}: truncated: needs byte {want} but has {len}")]
    Truncated {
        /// The file or object.
        name: String,
        /// The byte the read needed.
        want: u64,
        /// Its length.
        len: u64,
    },
    /// A manifest or pointer that is not what it must be.
    #[error("{name}: {message}")]
    Malformed {
        /// The file or object.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint folder without a manifest: the step was never committed.
    #[error("{name}: no committed checkpoint here (no manifest.json)")]
    NotCommitted {
        /// The folder.
        name: String,
    },
    /// A shard whose size or sha256 differs from its manifest entry.
    #[error(
        "{name}: shard hash mismatch: sha256 {got} ({got_size} bytes), manifest says {want} ({want_size} bytes)"
    )]
    HashMismatch {
        /// The shard.
        name: String,
        /// The sha256 read.
        got: String,
        /// The size read.
        got_size: u64,
        /// The manifest's sha256.
        want: String,
        /// The manifest's size.
        want_size: u64,
    },
}

impl StoreError {
    /// Wraps a local IO error on `name`.
    pub fn io(name: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            name: name.into(),
            source,
        }
    }

    /// Wraps an object-store error on `name`.
    pub fn store(name: impl Into<String>, source: object_store::Error) -> Self {
        Self::Store {
            name: name.into(),
            source,
        }
    }

    /// True when the store answered, for certain, that the file or object does not exist.
    /// Every other failure (a timeout, a refused request, a permission error) is uncertain:
    /// callers must not read it as "absent".
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            Self::Store { source, .. } => matches!(source, object_store::Error::NotFound { .. }),
            Self::NotCommitted { .. } => true,
            _ => false,
        }
    }

    /// True when the answer is certain and says the data is damaged (a hash or size mismatch,
    /// a malformed manifest, a truncated file): the checkpoint is corrupt, the store is fine.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Self::HashMismatch { .. } | Self::Malformed { .. } | Self::Truncated { .. }
        )
    }
}
