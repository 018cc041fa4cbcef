use crate::types::Revision;

/// What a store operation can fail with. The first five are the semantic
/// answers the API server maps to HTTP codes; the rest are faults.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },

    #[error("key {key:?} not found")]
    NotFound { key: String },

    #[error("conflict on key {key:?}: expected mod revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },

    #[error("revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },

    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },

    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),

    #[error("embedded database {path}: {source}")]
    Embedded {
        path: String,
        #[source]
        source: redb::Error,
    },

    #[error("commit failed, the write was not stored: {0}")]
    CommitFailed(String),

    #[error("corrupt record in embedded database: {0}")]
    Corrupt(String),

    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),

    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("store is shut down")]
    Closed,
}

impl Error {
    /// True for the answers that say something about the data (as opposed
    /// to faults of the backend).
    pub fn is_semantic(&self) -> bool {
        matches!(
            self,
            Error::AlreadyExists { .. }
                | Error::NotFound { .. }
                | Error::Conflict { .. }
                | Error::Compacted { .. }
                | Error::FutureRevision { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
