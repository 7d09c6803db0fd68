//! [`LogCapture`]: what a `fmt` subscriber writes, captured for a test to count lines by level.

use std::io;
use std::sync::{Arc, Mutex};

/// Collects everything a `fmt` subscriber installed by [`LogCapture::install`] writes.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// A capture, and a `fmt` subscriber writing into it (no colours, up to `level`) set as
    /// this thread's default until the guard is dropped. Run the test on a current-thread
    /// runtime, so that every task logs under it.
    pub fn install(level: tracing::Level) -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("lock").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The `WARN` lines written so far.
    pub fn warns(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains("WARN"))
            .collect()
    }

    /// The levels of the lines that contain every one of `needles`.
    pub fn levels(&self, needles: &[&str]) -> Vec<&'static str> {
        self.lines()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(|l| {
                ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                    .into_iter()
                    .find(|lvl| l.contains(lvl))
                    .unwrap_or("?")
            })
            .collect()
    }

    /// Forgets what was written so far.
    pub fn clear(&self) {
        self.0.lock().expect("lock").clear();
    }
}
