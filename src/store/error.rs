//! The store's one error type.

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// Every failure of the store layer. Each variant names the file or
/// directory involved, so a message printed on its own says where to look.
///
/// Causes are kept as text rather than as the source error so the error is
/// `Clone`: one failed group commit has to be reported to every caller whose
/// command was in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another handle in this one) holds the data
    /// directory's lock.
    #[error("data directory {} is in use by another parley peer (lock held on {})", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },

    /// The file exists but is not a readable parley database. It is never
    /// overwritten or recreated.
    #[error("{} is corrupt or not a parley database ({cause}); it was left untouched — move it aside to start a fresh history", path.display())]
    Corrupt { path: PathBuf, cause: String },

    /// The file or its directory cannot be written.
    #[error("{} is read-only ({cause}); parley needs to write its history there", path.display())]
    ReadOnly { path: PathBuf, cause: String },

    /// The disk (or a quota) is full.
    #[error("disk full while writing {} ({cause})", path.display())]
    Full { path: PathBuf, cause: String },

    /// The database is locked by another connection for longer than the busy
    /// timeout.
    #[error("{} is busy: locked by another connection ({cause})", path.display())]
    Busy { path: PathBuf, cause: String },

    /// An operating-system I/O failure.
    #[error("I/O error on {}: {cause}", path.display())]
    Io { path: PathBuf, cause: String },

    /// Any other SQLite failure.
    #[error("SQLite error on {}: {cause}", path.display())]
    Sqlite { path: PathBuf, cause: String },

    /// The store's writer thread has stopped (it panicked, or could not be
    /// started), so no command can run.
    #[error("the store for {} is closed", path.display())]
    Closed { path: PathBuf },
}

impl StoreError {
    /// Classifies a SQLite error by its primary result code.
    pub(crate) fn sqlite(path: &Path, e: rusqlite::Error) -> StoreError {
        let path = path.to_path_buf();
        let cause = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                StoreError::Corrupt { path, cause }
            }
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { path, cause },
            Some(ErrorCode::DiskFull) => StoreError::Full { path, cause },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Busy { path, cause }
            }
            Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
                StoreError::Io { path, cause }
            }
            _ => StoreError::Sqlite { path, cause },
        }
    }

    /// Classifies an I/O error.
    pub(crate) fn io(path: &Path, e: std::io::Error) -> StoreError {
        let path = path.to_path_buf();
        let cause = e.to_string();
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                StoreError::ReadOnly { path, cause }
            }
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StoreError::Full { path, cause }
            }
            _ => StoreError::Io { path, cause },
        }
    }
}
