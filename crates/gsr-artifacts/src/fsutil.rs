//! Path checks shared by selection, writers and extraction; DOS time conversion for zip.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{io_err, ArtifactsError};

/// Lexically normalise a `/`-separated relative path: drop empty and `.` segments, resolve
/// `..`. `None` when `..` climbs above the start.
pub(crate) fn normalize(rel: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            seg => out.push(seg),
        }
    }
    Some(out.join("/"))
}

/// `path` as a relative path of plain components, or `None` when it is absolute or
/// contains `..`.
pub(crate) fn clean_rel(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::CurDir => {}
            Component::Normal(c) => out.push(c),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The name of `rel` inside an archive: `/`-separated.
pub(crate) fn archive_name(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Maps relative paths to files under a canonical root, refusing any path whose parent
/// directory (followed through symlinks) is not inside the root. The last component is not
/// followed: callers look at it with `symlink_metadata`.
pub(crate) struct Resolver {
    root: PathBuf,
    parents: HashMap<PathBuf, bool>,
}

impl Resolver {
    /// `project_dir` must exist.
    pub(crate) fn new(project_dir: &Path) -> Result<Resolver, ArtifactsError> {
        let root = project_dir.canonicalize().map_err(io_err(project_dir))?;
        if !root.is_dir() {
            return Err(ArtifactsError::InvalidPath {
                path: project_dir.to_owned(),
                reason: "not a directory".into(),
            });
        }
        Ok(Resolver {
            root,
            parents: HashMap::new(),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the directory `rel_dir` (relative, clean) resolves to a place inside the root.
    /// A missing directory counts as inside: nothing can be read through it.
    pub(crate) fn dir_inside(&mut self, rel_dir: &Path) -> bool {
        if rel_dir.as_os_str().is_empty() {
            return true;
        }
        if let Some(ok) = self.parents.get(rel_dir) {
            return *ok;
        }
        let ok = match self.root.join(rel_dir).canonicalize() {
            Ok(real) => real.starts_with(&self.root),
            Err(_) => true,
        };
        self.parents.insert(rel_dir.to_owned(), ok);
        ok
    }

    /// The full path of `rel`, checked: relative, no `..`, parent inside the root.
    pub(crate) fn resolve(&mut self, rel: &Path) -> Result<(PathBuf, PathBuf), ArtifactsError> {
        let clean = clean_rel(rel).ok_or_else(|| ArtifactsError::InvalidPath {
            path: rel.to_owned(),
            reason: "not a relative path inside the project directory".into(),
        })?;
        let parent = clean.parent().unwrap_or(Path::new("")).to_owned();
        if !self.dir_inside(&parent) {
            return Err(ArtifactsError::InvalidPath {
                path: rel.to_owned(),
                reason: "goes through a symlink that leads outside the project directory".into(),
            });
        }
        Ok((self.root.join(&clean), clean))
    }

    /// Whether the target of the symlink (or file) at `full` lies inside the root.
    pub(crate) fn target_inside(&self, full: &Path) -> bool {
        full.canonicalize()
            .map(|real| real.starts_with(&self.root))
            .unwrap_or(false)
    }
}

/// A file time as a zip (MS-DOS, here UTC) timestamp; out-of-range times become the zip
/// default (1980-01-01).
pub(crate) fn dos_time(t: SystemTime) -> zip::DateTime {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => return zip::DateTime::default(),
    };
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    if !(1980..=2107).contains(&y) {
        return zip::DateTime::default();
    }
    zip::DateTime::from_date_and_time(
        y as u16,
        m as u8,
        d as u8,
        (rem / 3600) as u8,
        (rem % 3600 / 60) as u8,
        (rem % 60) as u8,
    )
    .unwrap_or_default()
}

/// A zip timestamp (taken as UTC) as a `SystemTime`.
pub(crate) fn system_time(t: zip::DateTime) -> Option<SystemTime> {
    if !t.is_valid() {
        return None;
    }
    let days = days_from_civil(t.year().into(), t.month().into(), t.day().into());
    let secs = days * 86_400
        + i64::from(t.hour()) * 3600
        + i64::from(t.minute()) * 60
        + i64::from(t.second());
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("./a//b/./c/").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize(".").as_deref(), Some(""));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("a/../../x"), None);
    }

    #[test]
    fn clean_relative_paths() {
        assert_eq!(clean_rel(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(clean_rel(Path::new("a/../b")), None);
        assert_eq!(clean_rel(Path::new("/etc")), None);
    }

    #[test]
    fn time_round_trip() {
        // 2024-02-29 13:37:42 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_709_213_862);
        let dos = dos_time(t);
        assert_eq!(
            (dos.year(), dos.month(), dos.day(), dos.hour(), dos.minute()),
            (2024, 2, 29, 13, 37)
        );
        // DOS time has a 2-second resolution.
        assert_eq!(system_time(dos), Some(t - Duration::from_secs(0)));
        assert_eq!(dos_time(UNIX_EPOCH), zip::DateTime::default());
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
