//! Archive writers: zip (the `archive` artifact), gzip (reports) and raw (one file).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use walkdir::WalkDir;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::fsutil::{archive_name, dos_time, Resolver};
use crate::{io_err, ArtifactsError};

const BUFFER: usize = 64 * 1024;

/// Write a zip archive of `files` (relative to `project_dir`) to `out`, from its current
/// position. Directories bring their whole subtree; unix modes and modification times are
/// kept; symlinks are stored as symlinks, never followed. Returns the archive size.
pub fn write_zip(
    project_dir: &Path,
    files: &[PathBuf],
    out: &mut File,
) -> Result<u64, ArtifactsError> {
    let mut resolver = Resolver::new(project_dir)?;
    let start = out.stream_position().map_err(io_err("archive"))?;
    let mut zip = ZipWriter::new(BufWriter::with_capacity(BUFFER, &mut *out));
    let mut seen = HashSet::new();
    for rel in files {
        let (full, rel) = resolver.resolve(rel)?;
        if rel.as_os_str().is_empty() {
            return Err(ArtifactsError::InvalidPath {
                path: rel,
                reason: "empty path".into(),
            });
        }
        let meta = std::fs::symlink_metadata(&full).map_err(io_err(&rel))?;
        if meta.is_dir() {
            for entry in WalkDir::new(&full).follow_links(false).sort_by_file_name() {
                let entry = entry.map_err(|e| {
                    let path = e.path().unwrap_or(&full).to_owned();
                    ArtifactsError::Io {
                        path,
                        source: e.into(),
                    }
                })?;
                let sub = rel.join(entry.path().strip_prefix(&full).unwrap_or(Path::new("")));
                let meta = entry.metadata().map_err(|e| ArtifactsError::Io {
                    path: sub.clone(),
                    source: e.into(),
                })?;
                add_entry(&mut zip, &mut seen, &sub, entry.path(), &meta)?;
            }
        } else {
            add_entry(&mut zip, &mut seen, &rel, &full, &meta)?;
        }
    }
    let buffered = zip.finish().map_err(zip_err("finishing the zip archive"))?;
    buffered.into_inner().map_err(|e| ArtifactsError::Io {
        path: "archive".into(),
        source: e.into_error(),
    })?;
    let end = out.stream_position().map_err(io_err("archive"))?;
    Ok(end - start)
}

fn add_entry<W: Write + Seek>(
    zip: &mut ZipWriter<W>,
    seen: &mut HashSet<String>,
    rel: &Path,
    full: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), ArtifactsError> {
    let mut name = archive_name(rel);
    let file_type = meta.file_type();
    if file_type.is_dir() {
        name.push('/');
    }
    if !seen.insert(name.clone()) {
        return Ok(());
    }
    let mut options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(meta.permissions().mode())
        .last_modified_time(meta.modified().map(dos_time).unwrap_or_default());
    if file_type.is_symlink() {
        let target = std::fs::read_link(full).map_err(io_err(rel))?;
        zip.add_symlink(name, target.to_string_lossy(), options)
            .map_err(zip_err(format!("adding {}", rel.display())))?;
    } else if file_type.is_dir() {
        zip.add_directory(name, options)
            .map_err(zip_err(format!("adding {}", rel.display())))?;
    } else if file_type.is_file() {
        options = options.large_file(meta.len() >= u64::from(u32::MAX));
        let mut file = File::open(full).map_err(io_err(rel))?;
        zip.start_file(name, options)
            .map_err(zip_err(format!("adding {}", rel.display())))?;
        io::copy(&mut file, zip).map_err(io_err(rel))?;
    }
    // Sockets, FIFOs and devices have no content to archive.
    Ok(())
}

/// Write `files` to `out` as gzip, one gzip member per file (named after it), in order:
/// decompressed it is the concatenation of the files, and GitLab parses each member as one
/// report. Directories bring their regular files; symlinks are followed only to files
/// inside the project directory. Returns the compressed size.
pub fn write_gzip(
    project_dir: &Path,
    files: &[PathBuf],
    out: &mut File,
) -> Result<u64, ArtifactsError> {
    let mut resolver = Resolver::new(project_dir)?;
    let mut inputs = Vec::new();
    for rel in files {
        regular_files(&mut resolver, rel, &mut inputs)?;
    }
    if inputs.is_empty() {
        return Err(ArtifactsError::NoFiles);
    }
    let start = out.stream_position().map_err(io_err("archive"))?;
    let mut buffered = BufWriter::with_capacity(BUFFER, &mut *out);
    for (rel, full) in inputs {
        let mut file = File::open(&full).map_err(io_err(&rel))?;
        let mtime = file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u32::try_from(d.as_secs()).ok())
            .unwrap_or(0);
        let mut gz = GzBuilder::new()
            .filename(archive_name(&rel))
            .mtime(mtime)
            .write(&mut buffered, Compression::default());
        io::copy(&mut file, &mut gz).map_err(io_err(&rel))?;
        gz.finish().map_err(io_err("archive"))?;
    }
    buffered.flush().map_err(io_err("archive"))?;
    drop(buffered);
    let end = out.stream_position().map_err(io_err("archive"))?;
    Ok(end - start)
}

/// Copy exactly one regular file to `out` (artifacts with `artifact_format: raw`). Returns
/// the number of bytes written.
pub fn write_raw(
    project_dir: &Path,
    files: &[PathBuf],
    out: &mut File,
) -> Result<u64, ArtifactsError> {
    let [rel] = files else {
        return Err(ArtifactsError::RawFileCount(files.len()));
    };
    let mut resolver = Resolver::new(project_dir)?;
    let (full, rel) = resolver.resolve(rel)?;
    let meta = std::fs::symlink_metadata(&full).map_err(io_err(&rel))?;
    let readable = meta.is_file()
        || (meta.file_type().is_symlink() && resolver.target_inside(&full) && full.is_file());
    if !readable {
        return Err(ArtifactsError::NotAFile { path: rel });
    }
    let mut file = File::open(&full).map_err(io_err(&rel))?;
    let mut buffered = BufWriter::with_capacity(BUFFER, &mut *out);
    let n = io::copy(&mut file, &mut buffered).map_err(io_err(&rel))?;
    buffered.flush().map_err(io_err("archive"))?;
    Ok(n)
}

/// The regular files `rel` stands for, in name order: itself, a symlink to a file inside
/// the project, or the files below a directory.
fn regular_files(
    resolver: &mut Resolver,
    rel: &Path,
    out: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), ArtifactsError> {
    let (full, rel) = resolver.resolve(rel)?;
    let meta = std::fs::symlink_metadata(&full).map_err(io_err(&rel))?;
    if meta.is_dir() {
        for entry in WalkDir::new(&full).follow_links(false).sort_by_file_name() {
            let entry = entry.map_err(|e| ArtifactsError::Io {
                path: e.path().unwrap_or(&full).to_owned(),
                source: e.into(),
            })?;
            let sub = rel.join(entry.path().strip_prefix(&full).unwrap_or(Path::new("")));
            let ft = entry.file_type();
            if ft.is_file()
                || (ft.is_symlink()
                    && resolver.target_inside(entry.path())
                    && entry.path().is_file())
            {
                out.push((sub, entry.path().to_owned()));
            }
        }
        return Ok(());
    }
    if meta.is_file()
        || (meta.file_type().is_symlink() && resolver.target_inside(&full) && full.is_file())
    {
        out.push((rel, full));
        return Ok(());
    }
    Err(ArtifactsError::NotAFile { path: rel })
}

fn zip_err(context: impl Into<String>) -> impl FnOnce(zip::result::ZipError) -> ArtifactsError {
    let context = context.into();
    move |source| ArtifactsError::Zip { context, source }
}
