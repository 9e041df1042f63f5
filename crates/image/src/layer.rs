//! Reproducible layers: uncompressed tar streams whose entries are sorted,
//! stamped with mtime 0 and carry only mode, owner and content, hashed as
//! they are written. The same inputs always give the same digest, so an
//! image's digest says what is in it, not when it was built.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result, io};

/// A blob written to disk: a layer, or any content of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Where it is.
    pub path: PathBuf,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A layer being written.
pub struct LayerWriter {
    tar: tar::Builder<Hashing<BufWriter<File>>>,
    path: PathBuf,
    /// Directories already in the layer (without trailing slash).
    dirs: BTreeSet<String>,
}

fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(0);
    h.set_size(size);
    h
}

impl LayerWriter {
    /// A new layer at `path`.
    pub fn create(path: &Path) -> Result<LayerWriter> {
        let file = File::create(path).map_err(io(path))?;
        let mut tar = tar::Builder::new(Hashing {
            inner: BufWriter::new(file),
            hasher: Sha256::new(),
            len: 0,
        });
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(LayerWriter {
            tar,
            path: path.to_path_buf(),
            dirs: BTreeSet::new(),
        })
    }

    /// Adds the parents of `path` (root-owned, 0755) that are not there yet.
    fn parents(&mut self, path: &str) -> Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !self.dirs.contains(&prefix) {
                let dir = prefix.clone();
                self.dir(&dir, 0o755, 0, 0)?;
            }
        }
        Ok(())
    }

    /// Adds directory `path` (relative, e.g. `usr/local/bin`).
    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let path = path.trim_matches('/').to_string();
        if self.dirs.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        let mut h = header(tar::EntryType::Directory, mode, uid, gid, 0);
        self.tar
            .append_data(&mut h, format!("{path}/"), std::io::empty())
            .map_err(io(&self.path))?;
        self.dirs.insert(path);
        Ok(())
    }

    /// Adds `bytes` as file `path`, root-owned.
    pub fn bytes(&mut self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        self.parents(path)?;
        let mut h = header(tar::EntryType::Regular, mode, 0, 0, bytes.len() as u64);
        self.tar
            .append_data(&mut h, path.trim_start_matches('/'), bytes)
            .map_err(io(&self.path))
    }

    /// Adds the content of `source` as file `path`, root-owned.
    pub fn file(&mut self, path: &str, source: &Path, mode: u32) -> Result<()> {
        self.parents(path)?;
        let file = File::open(source).map_err(io(source))?;
        let len = file.metadata().map_err(io(source))?.len();
        let mut h = header(tar::EntryType::Regular, mode, 0, 0, len);
        self.tar
            .append_data(&mut h, path.trim_start_matches('/'), file)
            .map_err(io(source))
    }

    /// Adds symlink `path` → `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parents(path)?;
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        let path = path.trim_start_matches('/');
        self.tar
            .append_link(&mut h, path, target)
            .map_err(io(Path::new(path)))
    }

    /// Adds everything under `root` at the layer's root, in sorted order,
    /// with the files' modes and owners.
    pub fn tree(&mut self, root: &Path) -> Result<()> {
        self.walk(root, root)
    }

    fn walk(&mut self, root: &Path, dir: &Path) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.path()).map_err(io(dir)))
            .collect::<Result<_>>()?;
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            let rel = path
                .strip_prefix(root)
                .map_err(|_| Error::Invalid(format!("{} outside its tree", path.display())))?
                .to_string_lossy()
                .into_owned();
            let kind = meta.file_type();
            if kind.is_dir() {
                self.dir(&rel, meta.mode(), meta.uid(), meta.gid())?;
                self.walk(root, &path)?;
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path))?;
                let mut h = header(tar::EntryType::Symlink, 0o777, meta.uid(), meta.gid(), 0);
                self.tar
                    .append_link(&mut h, &rel, target)
                    .map_err(io(&path))?;
            } else if kind.is_file() {
                let file = File::open(&path).map_err(io(&path))?;
                let mut h = header(
                    tar::EntryType::Regular,
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.len(),
                );
                self.tar
                    .append_data(&mut h, &rel, file)
                    .map_err(io(&path))?;
            } else {
                return Err(Error::Invalid(format!(
                    "{}: neither a file, a directory nor a symlink",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// Ends the layer: its path, digest and size.
    pub fn finish(self) -> Result<Blob> {
        let path = self.path.clone();
        let mut hashing = self.tar.into_inner().map_err(io(&path))?;
        hashing.flush().map_err(io(&path))?;
        Ok(Blob {
            digest: format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
            size: hashing.len,
            path,
        })
    }
}

/// The digest and size of the file at `path`.
pub fn blob_of(path: &Path) -> Result<Blob> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hashing = Hashing {
        inner: std::io::sink(),
        hasher: Sha256::new(),
        len: 0,
    };
    std::io::copy(&mut file, &mut hashing).map_err(io(path))?;
    Ok(Blob {
        path: path.to_path_buf(),
        digest: format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
        size: hashing.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, name: &str) -> Blob {
        let mut w = LayerWriter::create(&dir.join(name)).expect("create");
        w.bytes("usr/local/bin/tool", b"#!/bin/true\n", 0o755)
            .expect("file");
        w.symlink("bin", "usr/bin").expect("link");
        w.finish().expect("finish")
    }

    #[test]
    fn the_same_inputs_give_the_same_digest_and_parents_come_first() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (layer(tmp.path(), "a.tar"), layer(tmp.path(), "b.tar"));
        assert_eq!(a.digest, b.digest);
        assert_eq!(blob_of(&a.path).expect("blob").digest, a.digest);
        let mut archive = tar::Archive::new(File::open(&a.path).expect("open"));
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/tool",
                "bin"
            ]
        );
    }
}
