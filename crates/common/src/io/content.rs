//! The content hashes of a run's input files and folders, which every
//! output's provenance records; large files' hashes are cached.

use std::{fs, io::Read, path::Path};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::write_text;
use crate::hash::hex;

/// SHA-256 of a file's bytes. Files of 64 MB or more (model weights) are
/// hashed once and remembered by (path, size, modification time) in
/// `~/.cache/wrpo/sha256.json` (or under `$XDG_CACHE_HOME`), so a rerun does
/// not read gigabytes again; a file that changes changes its key.
pub fn file_sha256(path: &Path) -> Result<String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|d| d.join("wrpo/sha256.json"));
    file_sha256_cached(path, cache)
}

fn file_sha256_cached(path: &Path, cache: Option<std::path::PathBuf>) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if meta.len() < 64 << 20 {
        return hash_bytes_of(path);
    }
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let key = format!("{}\t{}\t{modified}", fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display(), meta.len());
    let mut known: std::collections::BTreeMap<String, String> =
        cache.as_ref().and_then(|c| fs::read_to_string(c).ok()).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    if let Some(hash) = known.get(&key) {
        return Ok(hash.clone());
    }
    let hash = hash_bytes_of(path)?;
    if let Some(cache) = cache {
        known.insert(key, hash.clone());
        // A cache that cannot be written only costs a re-hash next time.
        let _ = fs::create_dir_all(cache.parent().expect("a file in a folder"))
            .map_err(anyhow::Error::from)
            .and_then(|_| write_text(&cache, &serde_json::to_string_pretty(&known)?));
    }
    Ok(hash)
}

fn hash_bytes_of(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of a file, or of a folder: the hash of the sorted list of
/// `relative path NUL file hash NL` over its visible files (hidden files and
/// temporary files of unfinished writes are left out).
pub fn content_sha256(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return file_sha256(path);
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for rel in files {
        let digest = file_sha256(&path.join(&rel))?;
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(digest.as_bytes());
        h.update(b"\n");
    }
    Ok(hex(&h.finalize()))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_are_hashed_once_per_path_size_and_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        let (file, cache) = (dir.path().join("model.gguf"), dir.path().join("cache/sha256.json"));
        fs::write(&file, vec![7u8; 64 << 20]).unwrap();
        let hash = file_sha256_cached(&file, Some(cache.clone())).unwrap();
        assert_eq!(hash, hash_bytes_of(&file).unwrap());
        // The second time the cache answers (a planted value proves it).
        let text = fs::read_to_string(&cache).unwrap();
        fs::write(&cache, text.replace(&hash, "planted")).unwrap();
        assert_eq!(file_sha256_cached(&file, Some(cache.clone())).unwrap(), "planted");
        // A rewritten file has another modification time, so it is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, vec![8u8; 64 << 20]).unwrap();
        assert_eq!(file_sha256_cached(&file, Some(cache)).unwrap(), hash_bytes_of(&file).unwrap());
    }

    #[test]
    fn folder_hash_changes_with_content_and_ignores_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), "1").unwrap();
        let h1 = content_sha256(dir.path()).unwrap();
        fs::write(dir.path().join(".a.tmp"), "junk").unwrap();
        assert_eq!(h1, content_sha256(dir.path()).unwrap());
        fs::write(dir.path().join("a.txt"), "2").unwrap();
        assert_ne!(h1, content_sha256(dir.path()).unwrap());
    }
}
