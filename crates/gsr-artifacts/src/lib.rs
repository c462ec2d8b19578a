//! Building and extracting artifact archives (zip, gzip, raw) from path rules.
//!
//! Why: after the script, `artifacts:paths`/`exclude`/`untracked` and every `reports:` entry
//! must become archives GitLab accepts (`RUNNER-PROTOCOL.md` §4), and dependency artifacts
//! must be unpacked into the next job's project directory. Both directions run in the
//! runner's context on files a job controlled, so both are defensive:
//! - path rules never reach outside the project directory: patterns with `..` or absolute
//!   paths elsewhere are refused with a warning, and no file is read through a symlinked
//!   directory that leads out of it (symlinks themselves are archived as symlinks);
//! - extraction refuses entries that would land outside the destination (`..`, absolute
//!   paths, writes through symlinks, symlinks pointing out) before writing anything, and
//!   never restores setuid/setgid bits;
//! - file contents are streamed (`io::copy`), never held in memory, whatever their size.
//!
//! Path rules follow gitlab-runner: patterns are relative to the project directory, `*`
//! stays within one path segment and `**` crosses them (doublestar semantics, via
//! `globset`), a matched directory brings its whole subtree, `exclude` globs remove matches
//! (a matched directory excludes everything below it), and `untracked` adds the list the
//! caller got from `git ls-files -o` (`gsr_git::list_untracked`).
//!
//! Layout:
//! - `select`: [`select`], path rules → [`Selection`].
//! - `write`: [`write_zip`], [`write_gzip`], [`write_raw`].
//! - `extract`: [`extract_zip`].
//! - `fsutil`: shared path checks and DOS time conversion.

#![warn(missing_docs)]

mod extract;
mod fsutil;
mod select;
mod write;

use std::io;
use std::path::PathBuf;

pub use extract::extract_zip;
pub use select::{select, Selection};
pub use write::{write_gzip, write_raw, write_zip};

/// Why an archive could not be built or extracted.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    /// A file-system operation failed on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The zip library failed (corrupt archive, unsupported compression, ...).
    #[error("{context}: {source}")]
    Zip {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: zip::result::ZipError,
    },
    /// An archive entry would be written outside the destination directory.
    #[error("refusing to extract {name:?}: {reason}")]
    UnsafeEntry {
        /// The entry name as stored in the archive.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A path handed to a writer is not a safe path inside the project directory.
    #[error("{}: {reason}", path.display())]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `write_raw` got other than one file.
    #[error("a raw artifact needs exactly one file, got {0}")]
    RawFileCount(usize),
    /// `write_gzip` got no file.
    #[error("no files to archive")]
    NoFiles,
    /// A path that must be a regular file is not.
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path inside the project directory.
        path: PathBuf,
    },
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ArtifactsError {
    let path = path.into();
    move |source| ArtifactsError::Io { path, source }
}
