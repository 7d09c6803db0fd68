//! The end-to-end bench's figures: aggregation over repetitions, paired ratios, the markdown table, the JSON and
//! the SVG chart, all written to `target/bench-report/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::load::quantile_us;

/// One measurement: one variant, one concurrency, one max_size, one repetition.
#[derive(Debug)]
pub struct Sample {
    pub variant: &'static str,
    pub concurrency: usize,
    pub max_size: u32,
    /// Successful requests in the measurement window.
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Sorted.
    pub latencies_ns: Vec<u64>,
    /// Heap allocations in the whole process (client, server, backend) per request.
    pub allocs_per_request: f64,
    /// CPU time of the server's and the backend's threads per request (µs).
    pub server_cpu_us_per_request: f64,
    /// Sockets to or from the backend's port in TIME_WAIT after the run.
    pub time_wait: u64,
    /// Connections the backend accepted during the run (warm-up included).
    pub backend_connections: u64,
    /// Connections the pool held at the end (none for the variants without a pool).
    pub pool_connections: Option<u64>,
}

impl Sample {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The repetitions of one (variant, concurrency, max_size), together.
#[derive(Debug, Clone)]
pub struct Row {
    pub variant: &'static str,
    pub concurrency: usize,
    pub max_size: u32,
    pub rounds: usize,
    pub requests: u64,
    pub errors: u64,
    /// All requests over all measurement time.
    pub rps: f64,
    /// Each repetition's req/s, in repetition order.
    pub rps_rounds: Vec<f64>,
    /// Each repetition's p99 (µs), in repetition order.
    pub p99_rounds: Vec<f64>,
    /// Each repetition's server CPU per request (µs), in repetition order.
    pub cpu_rounds: Vec<f64>,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub allocs_per_request: f64,
    pub time_wait: u64,
    pub backend_connections: u64,
    /// Connections the pool held at the end of a round (most of one round).
    pub pool_connections: Option<u64>,
}

/// Groups samples by (concurrency, max_size) in order of first appearance, variants in
/// `variants` order.
pub fn aggregate(samples: &[Sample], variants: &[&'static str]) -> Vec<Row> {
    let mut keys: Vec<(usize, u32)> = Vec::new();
    for s in samples {
        if !keys.contains(&(s.concurrency, s.max_size)) {
            keys.push((s.concurrency, s.max_size));
        }
    }
    let mut rows = Vec::new();
    for (concurrency, max_size) in keys {
        for &variant in variants {
            let group: Vec<&Sample> = samples
                .iter()
                .filter(|s| {
                    s.variant == variant && s.concurrency == concurrency && s.max_size == max_size
                })
                .collect();
            if group.is_empty() {
                continue;
            }
            let mut latencies: Vec<u64> = group
                .iter()
                .flat_map(|s| s.latencies_ns.iter().copied())
                .collect();
            latencies.sort_unstable();
            let requests: u64 = group.iter().map(|s| s.requests).sum();
            let seconds: f64 = group.iter().map(|s| s.elapsed.as_secs_f64()).sum();
            let rps_each = group.iter().map(|s| s.rps());
            rows.push(Row {
                variant,
                concurrency,
                max_size,
                rounds: group.len(),
                requests,
                errors: group.iter().map(|s| s.errors).sum(),
                rps: requests as f64 / seconds.max(1e-9),
                rps_rounds: rps_each.clone().collect(),
                p99_rounds: group
                    .iter()
                    .map(|s| quantile_us(&s.latencies_ns, 0.99))
                    .collect(),
                cpu_rounds: group.iter().map(|s| s.server_cpu_us_per_request).collect(),
                rps_min: rps_each.clone().fold(f64::INFINITY, f64::min),
                rps_max: rps_each.fold(0.0, f64::max),
                p50_us: quantile_us(&latencies, 0.50),
                p99_us: quantile_us(&latencies, 0.99),
                allocs_per_request: group.iter().map(|s| s.allocs_per_request).sum::<f64>()
                    / group.len() as f64,
                time_wait: group.iter().map(|s| s.time_wait).max().unwrap_or(0),
                backend_connections: group
                    .iter()
                    .map(|s| s.backend_connections)
                    .max()
                    .unwrap_or(0),
                pool_connections: group.iter().filter_map(|s| s.pool_connections).max(),
            });
        }
    }
    rows
}

/// Memory for `connections` idle connections.
#[derive(Debug)]
pub struct Memory {
    pub connections: u32,
    /// Every connection was opened and accepted in time (else the figures are partial).
    pub complete: bool,
    /// VmRSS growth while the pool opened them (both ends live in this process).
    pub rss_delta: Option<i64>,
    /// Live heap growth, same.
    pub heap_delta: i64,
    /// Live heap growth for as many bare `TcpStream` pairs.
    pub bare_heap_delta: i64,
}

pub struct Report {
    pub quick: bool,
    pub reps: usize,
    /// Server and backend on one CPU, load generator on the other.
    pub pinned: bool,
    pub max_size: u32,
    pub warm_up: Duration,
    pub measure: Duration,
    pub rows: Vec<Row>,
    pub scale: Vec<Row>,
    pub memory: Vec<Memory>,
    pub wall_time: Duration,
}

/// Where the report goes: `$CARGO_TARGET_DIR/bench-report`, else `target/bench-report` in
/// the package.
pub fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-report")
}

fn find<'a>(rows: &'a [Row], variant: &str, concurrency: usize, max_size: u32) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.variant == variant && r.concurrency == concurrency && r.max_size == max_size)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// Median, min and max of per-repetition ratios.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// Of the finite values in `xs`; all NaN if none.
    pub fn of(mut xs: Vec<f64>) -> Spread {
        xs.retain(|x| x.is_finite());
        if xs.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n: 0,
            };
        }
        xs.sort_by(f64::total_cmp);
        let mid = xs.len() / 2;
        let median = if xs.len() % 2 == 1 {
            xs[mid]
        } else {
            (xs[mid - 1] + xs[mid]) / 2.0
        };
        Spread {
            median,
            min: xs[0],
            max: xs[xs.len() - 1],
            n: xs.len(),
        }
    }

    /// `median [min–max]`.
    pub fn show(&self) -> String {
        format!("{:.3} [{:.3}–{:.3}]", self.median, self.min, self.max)
    }

    /// Against a target that the value must reach (`at_least`) or stay under: "met" when the
    /// whole spread is on the right side, "MISSED" when the whole spread is on the wrong
    /// side, else "unresolved" (the spread is wider than the median's distance to the
    /// target), with the side the median is on.
    pub fn verdict(&self, target: f64, at_least: bool) -> String {
        let good = |x: f64| if at_least { x >= target } else { x <= target };
        if self.n == 0 {
            "no data".into()
        } else if good(self.min) && good(self.max) {
            "met".into()
        } else if !good(self.min) && !good(self.max) {
            "MISSED".into()
        } else {
            format!(
                "unresolved: spread wider than the distance to {target} (median {} it)",
                if good(self.median) { "meets" } else { "misses" }
            )
        }
    }
}

/// `row`'s per-repetition values over `base`'s in the same repetition (the variants of one
/// repetition and concurrency run seconds apart, so a load change on the machine between
/// repetitions affects both sides of each ratio alike).
fn paired(a: &[f64], b: &[f64]) -> Spread {
    Spread::of(a.iter().zip(b).map(|(a, b)| ratio(*a, *b)).collect())
}

/// req/s of `row` over `base`, paired by repetition.
pub fn rps_ratio(row: &Row, base: &Row) -> Spread {
    paired(&row.rps_rounds, &base.rps_rounds)
}

/// p99 of `row` over `base`, paired by repetition.
pub fn p99_ratio(row: &Row, base: &Row) -> Spread {
    paired(&row.p99_rounds, &base.p99_rounds)
}

/// Server CPU per request of `row` over `base`, paired by repetition.
pub fn cpu_ratio(row: &Row, base: &Row) -> Spread {
    paired(&row.cpu_rounds, &base.cpu_rounds)
}

fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

pub fn machine() -> String {
    // Counted from /proc/cpuinfo: the calling thread may be pinned to one CPU.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok();
    let cpus = cpuinfo.as_deref().map_or(0, |info| {
        info.lines().filter(|l| l.starts_with("processor")).count()
    });
    let model = cpuinfo
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "{cpus} CPUs, {model}, {} {}, load average (1 min) at the end {load}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

impl Report {
    fn baseline(&self, row: &Row) -> Option<&Row> {
        let rows = if self.rows.iter().any(|r| std::ptr::eq(r, row)) {
            &self.rows
        } else {
            &self.scale
        };
        find(rows, "bb8_state", row.concurrency, row.max_size)
    }

    pub fn json(&self, rows: &[Row]) -> String {
        let list = |xs: &[f64]| {
            xs.iter()
                .map(|x| json_number(*x))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let spread = |s: Option<Spread>| match s {
            Some(s) if s.n > 0 => format!(
                "{{\"median\": {}, \"min\": {}, \"max\": {}}}",
                json_number(s.median),
                json_number(s.min),
                json_number(s.max)
            ),
            _ => "null".into(),
        };
        let mut out = String::from("[\n");
        for (i, r) in rows.iter().enumerate() {
            let base = self.baseline(r);
            let _ = write!(
                out,
                "  {{\"variant\": \"{}\", \"concurrency\": {}, \"requests\": {}, \"errors\": {}, \
                 \"rps\": {}, \"p50_us\": {}, \"p99_us\": {}, \"max_size\": {}, \"reps\": {}, \
                 \"rps_min\": {}, \"rps_max\": {}, \"rps_reps\": [{}], \"p99_reps\": [{}], \
                 \"server_cpu_us_per_request_reps\": [{}], \
                 \"rps_vs_bb8_state\": {}, \"p99_vs_bb8_state\": {}, \"server_cpu_vs_bb8_state\": {}, \
                 \"time_wait\": {}, \"backend_connections\": {}, \"pool_connections\": {}, \
                 \"allocs_per_request\": {}}}",
                r.variant,
                r.concurrency,
                r.requests,
                r.errors,
                json_number(r.rps),
                json_number(r.p50_us),
                json_number(r.p99_us),
                r.max_size,
                r.rounds,
                json_number(r.rps_min),
                json_number(r.rps_max),
                list(&r.rps_rounds),
                list(&r.p99_rounds),
                list(&r.cpu_rounds),
                spread(base.map(|b| rps_ratio(r, b))),
                spread(base.map(|b| p99_ratio(r, b))),
                spread(base.map(|b| cpu_ratio(r, b))),
                r.time_wait,
                r.backend_connections,
                r.pool_connections
                    .map_or("null".to_string(), |n| n.to_string()),
                json_number(r.allocs_per_request),
            );
            out.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
        }
        out.push_str("]\n");
        out
    }

    fn table(&self, rows: &[Row], with_max_size: bool) -> String {
        let mut out = String::new();
        if with_max_size {
            out.push_str("| variant | concurrency | max_size | req/s | × bb8_state | p50 µs | p99 µs | p99 × bb8_state | concurrency ÷ req/s, µs | errors |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        } else {
            out.push_str("| variant | c | req/s (min – max) | req/s × bb8_state | p50 µs | p99 µs | p99 × bb8_state | server CPU µs/req | CPU × bb8_state | errors | TIME_WAIT | backend conns | allocs/req |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        }
        for r in rows {
            let base = self.baseline(r);
            if with_max_size {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {:.0} | {:.3} | {:.1} | {:.1} | {:.3} | {:.0} | {} |",
                    r.variant,
                    r.concurrency,
                    r.max_size,
                    r.rps,
                    base.map_or(f64::NAN, |b| ratio(r.rps, b.rps)),
                    r.p50_us,
                    r.p99_us,
                    base.map_or(f64::NAN, |b| ratio(r.p99_us, b.p99_us)),
                    r.concurrency as f64 / r.rps.max(1e-9) * 1e6,
                    r.errors
                );
            } else {
                let show = |s: Option<Spread>| s.map_or("–".to_string(), |s| s.show());
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {:.0} ({:.0} – {:.0}) | {} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {:.1} |",
                    r.variant,
                    r.concurrency,
                    r.rps,
                    r.rps_min,
                    r.rps_max,
                    show(base.map(|b| rps_ratio(r, b))),
                    r.p50_us,
                    r.p99_us,
                    show(base.map(|b| p99_ratio(r, b))),
                    Spread::of(r.cpu_rounds.clone()).median,
                    show(base.map(|b| cpu_ratio(r, b))),
                    r.errors,
                    r.time_wait,
                    r.backend_connections,
                    r.allocs_per_request
                );
            }
        }
        out
    }

    fn concurrencies(&self) -> Vec<usize> {
        let mut cs: Vec<usize> = Vec::new();
        for r in &self.rows {
            if !cs.contains(&r.concurrency) {
                cs.push(r.concurrency);
            }
        }
        cs
    }

    /// The ratios that decide the targets, one row per comparison, one column per
    /// concurrency: median [min–max] of the per-repetition ratios.
    pub fn summary(&self) -> String {
        let cs = self.concurrencies();
        let mut out = String::from("| ratio (median [min–max] over repetitions) |");
        for c in &cs {
            let _ = write!(out, " c={c} |");
        }
        out.push_str("\n|---|");
        for _ in &cs {
            out.push_str("--:|");
        }
        out.push('\n');
        type Metric = fn(&Row, &Row) -> Spread;
        let lines: [(&str, &str, &str, Metric); 9] = [
            (
                "`layer_eager` / `bb8_state` req/s",
                "layer_eager",
                "bb8_state",
                rps_ratio,
            ),
            (
                "`layer_lazy` / `bb8_state` req/s",
                "layer_lazy",
                "bb8_state",
                rps_ratio,
            ),
            (
                "`layer_eager` / `bb8_state` p99",
                "layer_eager",
                "bb8_state",
                p99_ratio,
            ),
            (
                "`layer_lazy` / `bb8_state` p99",
                "layer_lazy",
                "bb8_state",
                p99_ratio,
            ),
            (
                "the checks: `bb8_state_peek` / `bb8_state` req/s",
                "bb8_state_peek",
                "bb8_state",
                rps_ratio,
            ),
            (
                "the wrapper: `layer_eager` / `bb8_state_peek` req/s",
                "layer_eager",
                "bb8_state_peek",
                rps_ratio,
            ),
            (
                "the wrapper: `layer_lazy` / `bb8_state_peek` req/s",
                "layer_lazy",
                "bb8_state_peek",
                rps_ratio,
            ),
            (
                "`layer_eager` / `bb8_state` server CPU per request",
                "layer_eager",
                "bb8_state",
                cpu_ratio,
            ),
            (
                "`deadpool_state` / `bb8_state` req/s",
                "deadpool_state",
                "bb8_state",
                rps_ratio,
            ),
        ];
        for (label, a, b, metric) in lines {
            let _ = write!(out, "| {label} |");
            for &c in &cs {
                match (
                    find(&self.rows, a, c, self.max_size),
                    find(&self.rows, b, c, self.max_size),
                ) {
                    (Some(a), Some(b)) => {
                        let _ = write!(out, " {} |", metric(a, b).show());
                    }
                    _ => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out
    }

    /// The targets of the issue, checked against this run.
    fn targets(&self) -> String {
        let mut out = String::new();
        for c in self.concurrencies() {
            let get = |v: &str| find(&self.rows, v, c, self.max_size);
            let Some(bb8) = get("bb8_state") else {
                continue;
            };
            for v in ["layer_eager", "layer_lazy"] {
                let Some(r) = get(v) else { continue };
                let rps = rps_ratio(r, bb8);
                let p99 = p99_ratio(r, bb8);
                let _ = writeln!(
                    out,
                    "- c={c} `{v}`: req/s {} × bb8_state (≥ 0.97: {}); p99 {} × (≤ 1.05: {}); allocations {:+.1}/request vs bb8_state",
                    rps.show(),
                    rps.verdict(0.97, true),
                    p99.show(),
                    p99.verdict(1.05, false),
                    r.allocs_per_request - bb8.allocs_per_request,
                );
            }
            if let (Some(eager), Some(cpr)) = (get("layer_eager"), get("connect_per_request")) {
                let _ = writeln!(
                    out,
                    "- c={c} `layer_eager` vs `connect_per_request`: req/s {}×; TIME_WAIT {} vs {}",
                    rps_ratio(eager, cpr).show(),
                    eager.time_wait,
                    cpr.time_wait,
                );
            }
            if let Some(d) = get("dedicated") {
                let _ = writeln!(
                    out,
                    "- c={c} `dedicated` (upper bound): req/s {} × bb8_state",
                    rps_ratio(d, bb8).show()
                );
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## End to end: axum + pool + loopback echo backend{}\n",
            if self.quick { " (--quick)" } else { "" }
        );
        let _ = writeln!(
            out,
            "Machine: {}. {} repetition(s), variant order rotated per repetition, {:.1} s warm-up + {:.1} s measured each; a fresh backend, server and pool per run; pools `max_size` {}; {}. Whole run {:.0} s.\n",
            machine(),
            self.reps,
            self.warm_up.as_secs_f64(),
            self.measure.as_secs_f64(),
            self.max_size,
            if self.pinned {
                "server runtime (one worker) and backend pinned to CPU 0, load generator to CPU 1"
            } else {
                "NOT pinned"
            },
            self.wall_time.as_secs_f64()
        );
        out.push_str(&self.summary());
        out.push_str("\n### Targets\n\n");
        out.push_str(&self.targets());
        out.push_str("\n### All variants\n\n");
        out.push_str(&self.table(&self.rows, false));
        out.push_str("\nreq/s: all repetitions' requests over all their measured time (min – max of the repetitions). × bb8_state: median [min–max] of the ratios paired within a repetition. p50/p99: over every request of every repetition; p99 × bb8_state: paired per repetition. server CPU: the server's and the backend's threads (both on CPU 0), from `/proc/self/task/*/schedstat`, per request, median over repetitions. TIME_WAIT: sockets to/from the backend's port in TIME_WAIT after the run (most of one repetition). backend conns: connections the backend accepted in one run, warm-up included (most of one repetition). allocs/req: heap allocations in the whole process (load generator, server, backend) per request.\n");
        if !self.scale.is_empty() {
            out.push_str("\n## Scale: `layer_eager` next to `bb8_state`\n\n");
            out.push_str(&self.table(&self.scale, true));
            out.push_str("\nThe first rows grow `max_size` at concurrency 256, the last rows grow concurrency at `max_size` 64, one round each (so noisier than the comparison above). concurrency ÷ req/s is the mean latency a closed loop must show at that throughput (Little's law): a p50 near it means latency grows with the queue, linearly, and nowhere else.\n");
        }
        if !self.memory.is_empty() {
            out.push_str("\n## Memory per idle pooled connection\n\n| idle connections | RSS growth | per connection | heap growth | per connection | bare `TcpStream` pairs, heap per pair |\n|--:|--:|--:|--:|--:|--:|\n");
            for m in &self.memory {
                let n = i64::from(m.connections.max(1));
                let rss = m
                    .rss_delta
                    .map_or("?".to_string(), |r| format!("{} KiB", r / 1024));
                let rss_each = m
                    .rss_delta
                    .map_or("?".to_string(), |r| format!("{} B", r / n));
                let _ = writeln!(
                    out,
                    "| {}{} | {} | {} | {} KiB | {} B | {} B |",
                    m.connections,
                    if m.complete {
                        ""
                    } else {
                        " (incomplete: see stderr)"
                    },
                    rss,
                    rss_each,
                    m.heap_delta / 1024,
                    m.heap_delta / n,
                    m.bare_heap_delta / n
                );
            }
            out.push_str("\nBoth ends of every connection live in this process (the backend only accepts and holds its end), so the growth includes the backend's accepted `TcpStream`; the last column is what a bare client `TcpStream` plus its accepted end cost, for comparison. Kernel socket buffers are not in RSS.\n");
        }
        out
    }

    /// Writes `e2e.json`, `e2e.md`, `e2e.svg` (and `scale.json`), returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        let mut put = |name: &str, text: String| -> std::io::Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            files.push(path);
            Ok(())
        };
        put("e2e.json", self.json(&self.rows))?;
        put("e2e.md", self.markdown())?;
        if !self.scale.is_empty() {
            put("scale.json", self.json(&self.scale))?;
        }
        let svg = dir.join("e2e.svg");
        self.chart(&svg).map_err(std::io::Error::other)?;
        files.push(svg);
        Ok(files)
    }

    /// Two panels, req/s and p99 against concurrency, one line per variant.
    fn chart(&self, path: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use plotters::prelude::*;

        let mut concurrencies: Vec<usize> = self.rows.iter().map(|r| r.concurrency).collect();
        concurrencies.dedup();
        let mut variants: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !variants.contains(&r.variant) {
                variants.push(r.variant);
            }
        }
        let colors = [
            RGBColor(214, 39, 40),
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(148, 103, 189),
            RGBColor(127, 127, 127),
        ];
        let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        let x_max = concurrencies.len().saturating_sub(1).max(1) as f64;
        type Metric = (&'static str, fn(&Row) -> f64);
        let metrics: [Metric; 2] = [
            ("requests per second", |r| r.rps),
            ("p99 latency (µs)", |r| r.p99_us),
        ];
        for (panel, (title, metric)) in panels.iter().zip(metrics) {
            let y_max = self
                .rows
                .iter()
                .map(metric)
                .filter(|y| y.is_finite())
                .fold(1.0, f64::max)
                * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.2..x_max + 0.2, 0.0..y_max)?;
            let labels = concurrencies.clone();
            chart
                .configure_mesh()
                .x_desc("concurrency")
                .disable_x_mesh()
                .x_labels(concurrencies.len() * 4)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 {
                        labels
                            .get(i as usize)
                            .map_or(String::new(), |c| c.to_string())
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            for (vi, variant) in variants.iter().enumerate() {
                let color = colors[vi % colors.len()];
                let points: Vec<(f64, f64)> = concurrencies
                    .iter()
                    .enumerate()
                    .filter_map(|(xi, &c)| {
                        find(&self.rows, variant, c, self.max_size)
                            .map(|r| (xi as f64, metric(r)))
                            .filter(|(_, y)| y.is_finite())
                    })
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(*variant)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}
