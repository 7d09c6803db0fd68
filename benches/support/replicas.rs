//! `--replicas`: one pool over three endpoints, one of them 2 ms slower per exchange, under
//! the same HTTP load and method as the main run (pinned, fresh per run, rotated, paired).
//!
//! | variant | the pool |
//! |---|---|
//! | `least_loaded_3` | three endpoints, the second +2 ms, `Balance::LeastLoaded` |
//! | `round_robin_3` | the same three, `Balance::RoundRobin` |
//! | `two_fast_only` | the two fast endpoints only (`LeastLoaded`): what a balancer can at best approach |
//! | `layer_eager_1` | one fast endpoint, the main run's `layer_eager` |
//! | `bb8_state_1` | one fast endpoint, the main run's `bb8_state` (the baseline of `layer_eager_1`) |
//!
//! `max_size` 16 per endpoint. `layer_eager_1 / bb8_state_1` is set against the same paired
//! ratio of 0.2's run (`benches/results/e2e-after.json`): the absolute req/s of two runs
//! on a shared machine do not compare, their ratios to a baseline run beside them do.
//!
//! Writes `target/bench-report/e2e-replicas.md` and `e2e-replicas.json`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{Balance, TcpPool, TcpPoolLayer};

use crate::load;
use crate::report::{self, Row, Sample, Spread};
use crate::support::EchoBackend;
use crate::{App, Pools, Runtimes, Server, Timing, Variant};

/// The slow endpoint's added latency per exchange.
const SLOW: Duration = Duration::from_millis(2);
const MAX_SIZE: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replica {
    LeastLoaded3,
    RoundRobin3,
    TwoFast,
    One,
    Bb8One,
}

impl Replica {
    const ALL: [Replica; 5] = [
        Replica::LeastLoaded3,
        Replica::RoundRobin3,
        Replica::TwoFast,
        Replica::One,
        Replica::Bb8One,
    ];

    fn name(self) -> &'static str {
        match self {
            Replica::LeastLoaded3 => "least_loaded_3",
            Replica::RoundRobin3 => "round_robin_3",
            Replica::TwoFast => "two_fast_only",
            Replica::One => "layer_eager_1",
            Replica::Bb8One => "bb8_state_1",
        }
    }

    /// The backends' added latencies.
    fn backends(self) -> &'static [Option<Duration>] {
        match self {
            Replica::LeastLoaded3 | Replica::RoundRobin3 => &[None, Some(SLOW), None],
            Replica::TwoFast => &[None, None],
            Replica::One | Replica::Bb8One => &[None],
        }
    }
}

/// One (variant, concurrency) measurement from scratch; also the share of the checkouts the
/// slow endpoint served.
fn measure(rts: &Runtimes, v: Replica, concurrency: usize, timing: Timing) -> (Sample, f64) {
    let backends: Vec<EchoBackend> = v
        .backends()
        .iter()
        .map(|delay| {
            rts.backend
                .block_on(EchoBackend::start_slow(*delay))
                .expect("start an echo backend")
        })
        .collect();
    let addrs: Vec<String> = backends.iter().map(EchoBackend::addr_string).collect();
    let (server, pools) = rts.server.block_on(async {
        let (app, pools) = match v {
            Replica::Bb8One => crate::app(Variant::Bb8State, &addrs[0], MAX_SIZE).await,
            Replica::One => crate::app(Variant::LayerEager, &addrs[0], MAX_SIZE).await,
            _ => {
                let mut builder = TcpPool::builder(addrs[0].clone()).max_size(MAX_SIZE);
                for addr in &addrs[1..] {
                    builder = builder.endpoint(addr.clone());
                }
                let balance = match v {
                    Replica::RoundRobin3 => Balance::RoundRobin,
                    _ => Balance::LeastLoaded,
                };
                let pool = builder.balance(balance).build().expect("TcpPool");
                let router = Router::new()
                    .route("/", get(crate::layer))
                    .layer(TcpPoolLayer::new(pool.clone()))
                    .with_state(());
                (App::Shared(router), Pools::Crate(pool))
            }
        };
        (Server::start(app).await, pools)
    });

    let measure_from = Instant::now() + timing.warm_up;
    let until = measure_from + timing.measure;
    let load = rts
        .load
        .spawn(load::run(server.addr, concurrency, measure_from, until));
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let (allocs_before, completed_before, cpu_before) = (
        crate::ALLOCATIONS.load(Relaxed),
        load::COMPLETED.load(Relaxed),
        crate::server_cpu_ns(),
    );
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let (allocs_after, completed_after, cpu_after) = (
        crate::ALLOCATIONS.load(Relaxed),
        load::COMPLETED.load(Relaxed),
        crate::server_cpu_ns(),
    );
    let mut result = rts.load.block_on(load).expect("load generator");

    let slow_share = match (&pools, v) {
        (Pools::Crate(pool), Replica::LeastLoaded3 | Replica::RoundRobin3) => {
            let endpoints = pool.state().endpoints;
            let total: u64 = endpoints.iter().map(|e| e.checkouts).sum();
            let slow = endpoints
                .iter()
                .find(|e| e.addr == addrs[1])
                .map_or(0, |e| e.checkouts);
            slow as f64 / total.max(1) as f64
        }
        _ => f64::NAN,
    };
    let pool_connections = pools.connections();
    let backend_connections = backends.iter().map(|b| b.accepted.load(Relaxed)).sum();
    rts.server.block_on(async {
        server.stop().await;
        drop(pools);
    });
    drop(backends);

    result.latencies_ns.sort_unstable();
    let completed = completed_after.saturating_sub(completed_before).max(1);
    let sample = Sample {
        variant: v.name(),
        concurrency,
        max_size: MAX_SIZE,
        requests: result.latencies_ns.len() as u64,
        errors: result.errors,
        elapsed: result.elapsed,
        latencies_ns: result.latencies_ns,
        allocs_per_request: (allocs_after.saturating_sub(allocs_before)) as f64 / completed as f64,
        server_cpu_us_per_request: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1000.0 / completed as f64,
            _ => f64::NAN,
        },
        time_wait: 0,
        backend_connections,
        pool_connections,
    };
    (sample, slow_share)
}

/// 0.2's `layer_eager` at concurrency `c` in `benches/results/e2e-after.json`: req/s, p99
/// and the median req/s ratio to `bb8_state`.
fn release_0_2(c: usize) -> Option<(f64, f64, String)> {
    const AFTER: &str = include_str!("../results/e2e-after.json");
    let number = |line: &str, key: &str| -> Option<f64> {
        let at = line.find(&format!("\"{key}\": "))? + key.len() + 4;
        let rest = &line[at..];
        let end = rest.find([',', '}'])?;
        rest[..end].trim().parse().ok()
    };
    let line = AFTER.lines().find(|l| {
        l.contains("\"variant\": \"layer_eager\"") && number(l, "concurrency") == Some(c as f64)
    })?;
    let ratio = line.find("\"rps_vs_bb8_state\": ").map(|at| {
        let rest = &line[at..];
        let (m, lo, hi) = (
            number(rest, "median").unwrap_or(f64::NAN),
            number(rest, "min").unwrap_or(f64::NAN),
            number(rest, "max").unwrap_or(f64::NAN),
        );
        format!("{m:.3} [{lo:.3}–{hi:.3}]")
    })?;
    Some((number(line, "rps")?, number(line, "p99_us")?, ratio))
}

fn find(rows: &[Row], v: Replica, c: usize) -> Option<&Row> {
    rows.iter()
        .find(|r| r.variant == v.name() && r.concurrency == c)
}

/// `--replicas [--quick] [--reps N] [--no-pin]`.
pub fn run(args: &[String]) {
    let quick = args.iter().any(|a| a == "--quick");
    let pin = !args.iter().any(|a| a == "--no-pin");
    let mut reps = if quick { 3 } else { 7 };
    if let Some(Some(r)) = crate::arg_after(args, "--reps").map(|r| r.and_then(|r| r.parse().ok()))
    {
        if r > 0 {
            reps = r;
        }
    }
    let timing = if quick {
        Timing {
            warm_up: Duration::from_millis(200),
            measure: Duration::from_millis(800),
        }
    } else {
        Timing {
            warm_up: Duration::from_millis(300),
            measure: Duration::from_millis(1200),
        }
    };
    let concurrencies = [1usize, 16, 64];
    let started = Instant::now();
    let rts = Runtimes::new(pin);
    let mut samples = Vec::new();
    let mut shares: Vec<(Replica, usize, f64)> = Vec::new();
    for rep in 0..reps {
        for &c in &concurrencies {
            let mut order = Replica::ALL;
            order.rotate_left(rep % Replica::ALL.len());
            for v in order {
                let (sample, share) = measure(&rts, v, c, timing);
                eprintln!(
                    "rep {} c={c:<3} {:<15} {:>9.0} req/s  p99 {:>8.1} us  slow share {:.3}  errors {}",
                    rep + 1,
                    v.name(),
                    sample.rps(),
                    load::quantile_us(&sample.latencies_ns, 0.99),
                    share,
                    sample.errors
                );
                samples.push(sample);
                shares.push((v, c, share));
            }
        }
    }
    let rows = report::aggregate(&samples, &Replica::ALL.map(Replica::name));
    let md = markdown(
        &rows,
        &shares,
        &concurrencies,
        reps,
        timing,
        rts.pinned,
        started.elapsed(),
    );
    println!("{md}");
    let dir = report::output_dir();
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("e2e-replicas.md"), &md))
        .and_then(|()| std::fs::write(dir.join("e2e-replicas.json"), json(&rows, &shares)));
    match written {
        Ok(()) => println!("wrote {}", dir.join("e2e-replicas.{md,json}").display()),
        Err(e) => {
            eprintln!("could not write the report to {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}

fn share_of(shares: &[(Replica, usize, f64)], v: Replica, c: usize) -> Spread {
    Spread::of(
        shares
            .iter()
            .filter(|(sv, sc, _)| *sv == v && *sc == c)
            .map(|(_, _, s)| *s)
            .collect(),
    )
}

fn markdown(
    rows: &[Row],
    shares: &[(Replica, usize, f64)],
    concurrencies: &[usize],
    reps: usize,
    timing: Timing,
    pinned: bool,
    wall: Duration,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Replicas: three endpoints, one +{SLOW:?} per exchange\n"
    );
    let _ = writeln!(
        md,
        "Machine: {}. {reps} repetition(s), variant order rotated per repetition, {:.1} s warm-up + {:.1} s measured each; fresh backends, server and pool per run; `max_size` {MAX_SIZE} per endpoint; {}. Whole run {:.0} s.\n",
        report::machine(),
        timing.warm_up.as_secs_f64(),
        timing.measure.as_secs_f64(),
        if pinned {
            "server runtime (one worker) and backends pinned to CPU 0, load generator to CPU 1"
        } else {
            "not pinned"
        },
        wall.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| variant | c | req/s (min – max) | p50 µs | p99 µs | slow endpoint's share of checkouts (median [min–max]) | errors |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|");
    for &c in concurrencies {
        for v in Replica::ALL {
            let Some(r) = find(rows, v, c) else { continue };
            let share = share_of(shares, v, c);
            let _ = writeln!(
                md,
                "| `{}` | {c} | {:.0} ({:.0} – {:.0}) | {:.1} | {:.1} | {} | {} |",
                v.name(),
                r.rps,
                r.rps_min,
                r.rps_max,
                r.p50_us,
                r.p99_us,
                if share.n > 0 {
                    share.show()
                } else {
                    "–".into()
                },
                r.errors
            );
        }
    }
    let _ = writeln!(
        md,
        "\n| paired ratio, median [min–max] over repetitions | {} |",
        concurrencies
            .iter()
            .map(|c| format!("c={c}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "--:|".repeat(concurrencies.len()));
    let pairs = [
        (Replica::LeastLoaded3, Replica::RoundRobin3),
        (Replica::LeastLoaded3, Replica::TwoFast),
        (Replica::RoundRobin3, Replica::TwoFast),
        (Replica::One, Replica::Bb8One),
    ];
    for (what, f) in [
        ("req/s", report::rps_ratio as fn(&Row, &Row) -> Spread),
        ("p99", report::p99_ratio),
    ] {
        for (a, b) in pairs {
            let cells: Vec<String> = concurrencies
                .iter()
                .map(|&c| match (find(rows, a, c), find(rows, b, c)) {
                    (Some(ra), Some(rb)) => f(ra, rb).show(),
                    _ => "–".into(),
                })
                .collect();
            let _ = writeln!(
                md,
                "| `{}` / `{}` {what} | {} |",
                a.name(),
                b.name(),
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(
        md,
        "\nOne endpoint against 0.2 (`benches/results/e2e-after.json`, `layer_eager`): the paired ratio to `bb8_state` is the comparable figure; absolute req/s depend on the machine's load that day.\n"
    );
    let _ = writeln!(
        md,
        "| c | `layer_eager_1` / `bb8_state_1` req/s now | 0.2: `layer_eager` / `bb8_state` | req/s now | 0.2 req/s | p99 µs now | 0.2 p99 µs |"
    );
    let _ = writeln!(md, "|--:|--:|--:|--:|--:|--:|--:|");
    for &c in concurrencies {
        let (Some(one), Some(base)) = (find(rows, Replica::One, c), find(rows, Replica::Bb8One, c))
        else {
            continue;
        };
        let (old_rps, old_p99, old_ratio) =
            release_0_2(c).unwrap_or((f64::NAN, f64::NAN, "–".into()));
        let _ = writeln!(
            md,
            "| {c} | {} | {old_ratio} | {:.0} | {old_rps:.0} | {:.1} | {old_p99:.1} |",
            report::rps_ratio(one, base).show(),
            one.rps,
            one.p99_us
        );
    }
    md
}

fn json(rows: &[Row], shares: &[(Replica, usize, f64)]) -> String {
    let list = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let v = Replica::ALL
            .into_iter()
            .find(|v| v.name() == r.variant)
            .unwrap_or(Replica::One);
        let share: Vec<f64> = shares
            .iter()
            .filter(|(sv, sc, _)| *sv == v && *sc == r.concurrency)
            .map(|(_, _, s)| *s)
            .filter(|s| s.is_finite())
            .collect();
        let _ = writeln!(
            out,
            "  {{\"variant\": \"{}\", \"concurrency\": {}, \"requests\": {}, \"errors\": {}, \"rps\": {:.3}, \"p50_us\": {:.3}, \"p99_us\": {:.3}, \"rps_reps\": [{}], \"p99_reps\": [{}], \"slow_share_reps\": [{}]}}{}",
            r.variant,
            r.concurrency,
            r.requests,
            r.errors,
            r.rps,
            r.p50_us,
            r.p99_us,
            list(&r.rps_rounds),
            list(&r.p99_rounds),
            list(&share),
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    out.push_str("]\n");
    out
}
