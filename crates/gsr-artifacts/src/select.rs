//! Path rules (`artifacts:paths`, `exclude`, `untracked`) → the list of files to archive.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

use crate::fsutil::{clean_rel, normalize, Resolver};
use crate::ArtifactsError;

/// What [`select`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Paths relative to the project directory, sorted and deduplicated: regular files,
    /// symlinks (archived as links) and empty directories. Directories with content are
    /// represented by their entries, so exclusions inside them hold.
    pub files: Vec<PathBuf>,
    /// Human-readable problems with the rules, for the job log (e.g.
    /// `foo/*.log: no matching files`).
    pub warnings: Vec<String>,
}

/// Apply gitlab-runner's path rules in `project_dir`.
///
/// `paths` and `exclude` are patterns relative to the project directory (absolute ones are
/// accepted when they point inside it); `untracked` is added as is (typically
/// `gsr_git::list_untracked`). Problems with single rules are warnings, not errors; the
/// error cases are a missing or unreadable project directory.
pub fn select(
    project_dir: &Path,
    paths: &[String],
    exclude: &[String],
    untracked: &[PathBuf],
) -> Result<Selection, ArtifactsError> {
    let resolver = Resolver::new(project_dir)?;
    let mut sel = Selector {
        given_root: project_dir.to_owned(),
        resolver,
        exclude: GlobSet::empty(),
        files: BTreeSet::new(),
        warnings: Vec::new(),
    };
    sel.exclude = sel.build_excludes(exclude);

    for pattern in paths {
        if pattern.trim().is_empty() {
            continue;
        }
        let Some(rel) = sel.relative_pattern(pattern) else {
            continue;
        };
        let matched = if is_glob(&rel) {
            match GlobBuilder::new(&rel).literal_separator(true).build() {
                Ok(glob) => sel.add_glob(pattern, &rel, &glob.compile_matcher()),
                Err(e) => {
                    sel.warnings
                        .push(format!("{pattern}: invalid pattern: {}", e.kind()));
                    continue;
                }
            }
        } else {
            sel.add_literal(pattern, Path::new(&rel))
        };
        // `None`: refused, already warned about.
        if matched == Some(0) {
            sel.warnings.push(format!("{pattern}: no matching files"));
        }
    }

    for path in untracked {
        match clean_rel(path) {
            Some(rel) if !rel.as_os_str().is_empty() => {
                let shown = rel.display().to_string();
                sel.add_literal(&shown, &rel);
            }
            _ => sel.warnings.push(format!(
                "{}: untracked path is not inside the project directory; skipped",
                path.display()
            )),
        }
    }

    Ok(Selection {
        files: sel.files.into_iter().collect(),
        warnings: sel.warnings,
    })
}

struct Selector {
    /// The project dir as the caller spelled it (for absolute patterns).
    given_root: PathBuf,
    resolver: Resolver,
    exclude: GlobSet,
    files: BTreeSet<PathBuf>,
    warnings: Vec<String>,
}

impl Selector {
    /// A pattern made relative to the project dir and normalised; `None` (with a warning)
    /// when it points outside.
    fn relative_pattern(&mut self, pattern: &str) -> Option<String> {
        let trimmed = pattern.trim();
        let relative = if trimmed.starts_with('/') {
            let roots = [
                self.given_root.to_string_lossy().into_owned(),
                self.resolver.root().to_string_lossy().into_owned(),
            ];
            let Some(abs) = normalize(trimmed) else {
                self.outside(pattern);
                return None;
            };
            let found = roots.iter().find_map(|root| {
                let root = normalize(root)?;
                if abs == root {
                    Some(String::new())
                } else {
                    abs.strip_prefix(&format!("{root}/")).map(str::to_owned)
                }
            });
            match found {
                Some(rel) => rel,
                None => {
                    self.outside(pattern);
                    return None;
                }
            }
        } else {
            trimmed.to_owned()
        };
        match normalize(&relative) {
            Some(rel) => Some(rel),
            None => {
                self.outside(pattern);
                None
            }
        }
    }

    fn outside(&mut self, pattern: &str) {
        self.warnings.push(format!(
            "{pattern}: path is outside the project directory; skipped"
        ));
    }

    fn build_excludes(&mut self, exclude: &[String]) -> GlobSet {
        let mut builder = GlobSetBuilder::new();
        for pattern in exclude {
            if pattern.trim().is_empty() {
                continue;
            }
            let Some(rel) = self.relative_pattern(pattern) else {
                continue;
            };
            match GlobBuilder::new(&rel).literal_separator(true).build() {
                Ok(glob) => {
                    builder.add(glob);
                }
                Err(e) => self
                    .warnings
                    .push(format!("{pattern}: invalid exclude pattern: {}", e.kind())),
            }
        }
        builder.build().unwrap_or_else(|e| {
            self.warnings.push(format!("exclude patterns: {e}"));
            GlobSet::empty()
        })
    }

    /// `rel` or one of its ancestors matches an exclude pattern.
    fn excluded(&self, rel: &Path) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        rel.ancestors()
            .take_while(|a| !a.as_os_str().is_empty())
            .any(|a| self.exclude.is_match(a))
    }

    /// A plain path: the file, symlink or directory (with its subtree). Returns how many
    /// entries the path matched (0 or 1), `None` when it was refused.
    fn add_literal(&mut self, pattern: &str, rel: &Path) -> Option<usize> {
        if rel.as_os_str().is_empty() {
            // The project directory itself.
            self.add_tree(Path::new(""));
            return Some(1);
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !self.resolver.dir_inside(parent) {
            self.through_symlink(pattern);
            return None;
        }
        let full = self.resolver.root().join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&full) else {
            return Some(0);
        };
        if self.excluded(rel) {
            return Some(1);
        }
        if meta.is_dir() {
            self.add_tree(rel);
        } else {
            self.files.insert(rel.to_owned());
        }
        Some(1)
    }

    fn through_symlink(&mut self, pattern: &str) {
        self.warnings.push(format!(
            "{pattern}: goes through a symlink that leads outside the project directory; skipped"
        ));
    }

    /// Every non-excluded entry below the directory `rel` (and `rel` itself when empty).
    fn add_tree(&mut self, rel: &Path) {
        let start = self.resolver.root().join(rel);
        let mut walk = WalkDir::new(&start).follow_links(false).into_iter();
        while let Some(entry) = walk.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.walk_warning(e);
                    continue;
                }
            };
            let Ok(sub) = entry.path().strip_prefix(self.resolver.root()) else {
                continue;
            };
            if sub.as_os_str().is_empty() {
                continue;
            }
            if self.excluded(sub) {
                if entry.file_type().is_dir() {
                    walk.skip_current_dir();
                }
                continue;
            }
            self.insert_entry(sub, entry.path(), entry.file_type().is_dir());
        }
    }

    /// A glob: walk from its literal prefix and take every match (a matched directory
    /// brings its subtree). Returns the number of matches, `None` when it was refused.
    fn add_glob(&mut self, pattern: &str, rel: &str, glob: &GlobMatcher) -> Option<usize> {
        let base: Vec<&str> = rel.split('/').take_while(|seg| !is_glob(seg)).collect();
        let base = PathBuf::from(base.join("/"));
        if !self.resolver.dir_inside(&base) {
            self.through_symlink(pattern);
            return None;
        }
        let start = self.resolver.root().join(&base);
        if !start.is_dir() {
            return Some(0);
        }
        let mut matched = 0;
        let mut walk = WalkDir::new(&start).follow_links(false).into_iter();
        while let Some(entry) = walk.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.walk_warning(e);
                    continue;
                }
            };
            let Ok(rel) = entry.path().strip_prefix(self.resolver.root()) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                continue;
            }
            let rel = rel.to_owned();
            let is_dir = entry.file_type().is_dir();
            if self.excluded(&rel) {
                if is_dir {
                    walk.skip_current_dir();
                }
                continue;
            }
            if !glob.is_match(&rel) {
                continue;
            }
            matched += 1;
            if is_dir {
                self.add_tree(&rel);
                walk.skip_current_dir();
            } else {
                self.files.insert(rel);
            }
        }
        Some(matched)
    }

    /// Files and symlinks are taken; a directory only when it is empty (a non-empty one is
    /// represented by its entries).
    fn insert_entry(&mut self, rel: &Path, full: &Path, is_dir: bool) {
        if is_dir {
            let empty = std::fs::read_dir(full)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                return;
            }
        }
        self.files.insert(rel.to_owned());
    }

    fn walk_warning(&mut self, e: walkdir::Error) {
        let path = e
            .path()
            .and_then(|p| p.strip_prefix(self.resolver.root()).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cause = e
            .io_error()
            .map(|io| io.to_string())
            .unwrap_or_else(|| e.to_string());
        self.warnings.push(format!("{path}: {cause}"));
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}
