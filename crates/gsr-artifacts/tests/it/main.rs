//! Integration tests: path rules on real directory trees, archive round trips, hostile
//! archives.

mod archive;
mod select;

use std::path::Path;

/// Create files (with parents) under `root`.
pub fn touch(root: &Path, files: &[&str]) {
    for f in files {
        let path = root.join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("content of {f}\n")).unwrap();
    }
}
