//! A temporary directory removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// A unique, fresh directory under the system temporary directory, removed (with what is in
/// it) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates one, failing the test if it cannot.
    #[allow(clippy::new_without_default)] // it creates a directory: not a default value
    pub fn new() -> TempDir {
        TempDir::try_new().expect("create temp dir")
    }

    /// Creates one.
    pub fn try_new() -> std::io::Result<TempDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "atp-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
