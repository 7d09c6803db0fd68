//! Discards and failures are counted by reason and logged at the right level: `debug` for
//! routine discards, `warn` for backend failures.

use testkit::logs::LogCapture;
use testkit::{app, setup};

// A current-thread runtime: every task runs on this thread, under the capturing subscriber.
#[tokio::test]
async fn discards_are_counted_by_reason_and_logged_at_the_right_level() {
    let (capture, _guard) = LogCapture::install(tracing::Level::DEBUG);

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
