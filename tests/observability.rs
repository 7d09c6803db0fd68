//! Discards and failures are counted by reason and logged at the right level: `debug` for
//! routine discards, `warn` for backend failures.

use std::io;
use std::sync::{Arc, Mutex};

use testkit::{app, setup};

/// Collects everything the `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("lock").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The levels of the lines that contain every one of `needles`.
    fn levels(&self, needles: &[&str]) -> Vec<&'static str> {
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
}

// A current-thread runtime: every task runs on this thread, under the capturing subscriber.
#[tokio::test]
async fn discards_are_counted_by_reason_and_logged_at_the_right_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (backend, pool, client) = setup(|b| b.max_size(2), app::eager).await;
    // Routine: a reply never read, an explicit discard, a stale idle connection.
    assert_eq!(client.get("/noread/x").await.status, 200);
    assert_eq!(client.get("/discard").await.status, 200);
    assert_eq!(client.get("/echo/warm").await.status, 200);
    backend.close_all().await;
    assert_eq!(client.get("/echo/fresh").await.status, 200);
    // Backend failures: it closes the connection mid-exchange; then it is down.
    assert_eq!(client.get("/close").await.status, 502);
    backend.stop().await;
    assert_eq!(client.get("/echo/down").await.status, 502);

    let s = pool.state();
    let d = s.discards;
    let lines = capture.lines();
    let figures = format!("{s:?}\n{}", lines.join("\n"));
    assert_eq!(
        (d.reply_not_read, d.explicit, d.health_check, d.eof),
        (1, 1, 1, 1),
        "{figures}"
    );
    assert!(s.connect_failures >= 1, "{figures}");
    let discard = "closing connection instead of reusing it";
    for routine in ["reply_not_read", "explicit", "health_check"] {
        assert_eq!(
            capture.levels(&[discard, routine]),
            ["DEBUG"],
            "{routine} is routine: {figures}"
        );
    }
    assert_eq!(
        capture.levels(&[discard, "eof"]),
        ["WARN"],
        "the backend closing mid-exchange is a backend failure: {figures}"
    );
    let connect_failed = capture.levels(&["connect to backend failed"]);
    assert!(
        !connect_failed.is_empty() && connect_failed.iter().all(|l| *l == "WARN"),
        "{figures}"
    );
}
