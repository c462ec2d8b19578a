//! Unpacking dependency artifacts, refusing anything that would escape the destination.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use zip::ZipArchive;

use crate::fsutil::system_time;
use crate::{io_err, ArtifactsError};

const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFDIR: u32 = 0o040_000;
/// Longest symlink target accepted (Linux `PATH_MAX`).
const MAX_LINK: u64 = 4096;

/// Extract the zip `archive` into `dest` (created if missing). Returns the number of
/// entries.
///
/// Every entry name is checked before anything is written: absolute names, `..` components
/// (also with `\` separators) and NUL bytes are refused. While writing, no file is written
/// through a symlink (existing ones at the destination are replaced, directories reached
/// through symlinks must resolve inside `dest`), and symlink entries must point inside
/// `dest`. Unix permission bits are restored without setuid/setgid/sticky; directories
/// always stay writable by their owner so later extractions into them work.
pub fn extract_zip(archive: &Path, dest: &Path) -> Result<usize, ArtifactsError> {
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut zip =
        ZipArchive::new(io::BufReader::new(file)).map_err(|source| ArtifactsError::Zip {
            context: format!("reading {}", archive.display()),
            source,
        })?;
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let root = dest.canonicalize().map_err(io_err(dest))?;

    // Check every name first, so a bad archive leaves nothing behind.
    let mut names = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(zip_err(archive))?;
        names.push(entry_path(entry.name())?);
    }

    let mut dirs = Vec::new();
    for (i, rel) in names.into_iter().enumerate() {
        let mut entry = zip.by_index(i).map_err(zip_err(archive))?;
        let name = entry.name().to_owned();
        let Some(rel) = rel else {
            continue; // "./": the destination itself
        };
        let mode = entry.unix_mode();
        let kind = mode.map(|m| m & S_IFMT);
        if entry.is_dir() || kind == Some(S_IFDIR) {
            let path = ensure_dir(&root, &rel, &name)?;
            dirs.push((path, mode));
            continue;
        }
        let parent = ensure_dir(&root, rel.parent().unwrap_or(Path::new("")), &name)?;
        let path = parent.join(rel.file_name().expect("a file entry has a name"));
        clear_path(&path, &name)?;
        if kind == Some(S_IFLNK) {
            let mut target = Vec::new();
            (&mut entry)
                .take(MAX_LINK + 1)
                .read_to_end(&mut target)
                .map_err(io_err(&path))?;
            if target.len() as u64 > MAX_LINK {
                return Err(unsafe_entry(&name, "symlink target is too long"));
            }
            let target = PathBuf::from(String::from_utf8_lossy(&target).into_owned());
            check_link_target(&rel, &target, &name)?;
            std::os::unix::fs::symlink(&target, &path).map_err(io_err(&path))?;
            if let Ok(real) = path.canonicalize() {
                if !real.starts_with(&root) {
                    let _ = std::fs::remove_file(&path);
                    return Err(unsafe_entry(
                        &name,
                        "symlink points outside the destination",
                    ));
                }
            }
            continue;
        }
        // O_EXCL: fails rather than follow a symlink created behind our back.
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        io::copy(&mut entry, &mut out).map_err(io_err(&path))?;
        if let Some(mode) = mode {
            out.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(io_err(&path))?;
        }
        if let Some(time) = entry.last_modified().and_then(system_time) {
            let _ = out.set_modified(time);
        }
    }
    let count = zip.len();

    // Directory modes last (deepest first), so a read-only directory does not block its
    // own entries.
    for (path, mode) in dirs.into_iter().rev() {
        if let Some(mode) = mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777 | 0o700))
                .map_err(io_err(&path))?;
        }
    }
    Ok(count)
}

/// The relative path an entry name stands for; `None` for the root itself.
fn entry_path(name: &str) -> Result<Option<PathBuf>, ArtifactsError> {
    if name.contains('\0') {
        return Err(unsafe_entry(name, "the name contains a NUL byte"));
    }
    let bytes = name.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if name.starts_with('/') || name.starts_with('\\') || drive {
        return Err(unsafe_entry(name, "absolute path"));
    }
    if name.split(['/', '\\']).any(|seg| seg == "..") {
        return Err(unsafe_entry(name, "path contains '..'"));
    }
    let rel: PathBuf = name
        .split('/')
        .filter(|seg| !seg.is_empty() && *seg != ".")
        .collect();
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Make sure the directory `rel` exists under `root`, creating missing parts one by one.
/// A component that is a symlink must resolve to a directory inside `root`.
fn ensure_dir(root: &Path, rel: &Path, name: &str) -> Result<PathBuf, ArtifactsError> {
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        let Component::Normal(part) = comp else {
            return Err(unsafe_entry(name, "unexpected path component"));
        };
        cur.push(part);
        match std::fs::symlink_metadata(&cur) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                let real = cur
                    .canonicalize()
                    .map_err(|_| unsafe_entry(name, "a parent directory is a dangling symlink"))?;
                if !real.starts_with(root) {
                    return Err(unsafe_entry(
                        name,
                        "a parent directory is a symlink that leads outside the destination",
                    ));
                }
                if !real.is_dir() {
                    return Err(not_a_dir(&cur));
                }
                cur = real;
            }
            Ok(_) => return Err(not_a_dir(&cur)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && cur.is_dir() => {}
                Err(e) => return Err(io_err(&cur)(e)),
            },
            Err(e) => return Err(io_err(&cur)(e)),
        }
    }
    Ok(cur)
}

/// Remove whatever is at `path` (a file or a symlink) so the new entry is written fresh and
/// never through a link. A directory in the way is an error.
fn clear_path(path: &Path, name: &str) -> Result<(), ArtifactsError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
        Ok(meta) if meta.is_dir() => Err(ArtifactsError::Io {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a directory is in the way of the file entry {name:?}"),
            ),
        }),
        Ok(_) => std::fs::remove_file(path).map_err(io_err(path)),
    }
}

/// A symlink at `rel` pointing to `target` must stay inside the destination, judged
/// lexically (its target may not exist yet).
fn check_link_target(rel: &Path, target: &Path, name: &str) -> Result<(), ArtifactsError> {
    if target.has_root() {
        return Err(unsafe_entry(name, "symlink target is an absolute path"));
    }
    let mut depth: usize = rel.components().count().saturating_sub(1);
    for comp in target.components() {
        match comp {
            Component::CurDir => {}
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| unsafe_entry(name, "symlink points outside the destination"))?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(name, "symlink target is an absolute path"))
            }
        }
    }
    Ok(())
}

fn unsafe_entry(name: &str, reason: &str) -> ArtifactsError {
    ArtifactsError::UnsafeEntry {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

fn not_a_dir(path: &Path) -> ArtifactsError {
    ArtifactsError::Io {
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ),
    }
}

fn zip_err(archive: &Path) -> impl FnOnce(zip::result::ZipError) -> ArtifactsError + '_ {
    move |source| ArtifactsError::Zip {
        context: format!("reading {}", archive.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(entry_path("a/./b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(entry_path("./").unwrap(), None);
        for bad in [
            "../evil",
            "a/../../evil",
            "/etc/passwd",
            "\\x",
            "C:\\x",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(entry_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn link_targets() {
        assert!(check_link_target(Path::new("a/l"), Path::new("../b"), "l").is_ok());
        assert!(check_link_target(Path::new("l"), Path::new("b/./c"), "l").is_ok());
        assert!(check_link_target(Path::new("a/l"), Path::new("../../b"), "l").is_err());
        assert!(check_link_target(Path::new("l"), Path::new("/etc"), "l").is_err());
        assert!(check_link_target(Path::new("l"), Path::new("x/../../y"), "l").is_err());
    }
}
