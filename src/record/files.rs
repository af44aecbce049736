//! Writing results so that nothing is lost: refuse to overwrite, and write to a
//! temporary name in the same directory, then rename.

use std::path::Path;

/// Fails if `path` exists, or its directory does not, naming the flag.
pub fn check_new_file(path: &Path, flag: &str) -> anyhow::Result<()> {
    if path.exists() {
        anyhow::bail!(
            "{flag} {}: the file exists; remove it or choose another name (results are never overwritten)",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!("{flag} {}: directory {} does not exist", path.display(), dir.display());
    }
    Ok(())
}

/// Fails unless a file can be created in `dir`, naming the flag: found at
/// start, not after hours of training.
pub fn check_writable_dir(dir: &Path, flag: &str) -> anyhow::Result<()> {
    let probe = dir.join(format!(".candle-mpi-probe.{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| anyhow::anyhow!("{flag} {}: cannot write there: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Serialises a value by its `Display` text (serde's `serialize_with`).
pub fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash
/// leaves either the old state or the whole new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().ok_or_else(|| anyhow::anyhow!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        // A full disk leaves no half-written temporary behind.
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot write {}: {e}", tmp.display());
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_existing_files_and_missing_directories() {
        let dir = std::env::temp_dir().join(format!("candle-mpi-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("rows.json");
        check_new_file(&f, "--json").unwrap();
        write_atomic(&f, b"[]").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"[]");
        let err = check_new_file(&f, "--json").unwrap_err().to_string();
        assert!(err.contains("--json") && err.contains("exists"), "{err}");
        let err = check_new_file(&dir.join("no/such/rows.json"), "--json").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
