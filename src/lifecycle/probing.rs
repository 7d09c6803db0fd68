//! One round of idle probing: each idle connection not used since the previous round gets
//! the non-blocking peek, then the configured probe, one connection at a time.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Weak;

use bb8::PooledConnection;

use crate::lifecycle::state::{Verdict, Why};
use crate::lifecycle::sweep::Taken;
use crate::pool::{Shared, TcpManager};
use crate::replicas::Endpoint;

/// Probes the idle connections of `endpoint` not used since the last round. A dead one is
/// closed (the task then refills `min_idle`); none is opened here, and a connection in use
/// is never touched.
pub(crate) async fn round(endpoint: &Weak<Endpoint>, shared: &Shared) {
    let counts = &shared.lifecycle.counts;
    let probe = shared.config.probe.clone();
    let mut to_probe = Vec::new();
    {
        let Some(e) = endpoint.upgrade() else { return };
        // The peek needs no await: every connection at once, in one sweep.
        let mut taken = Taken::idle(&e);
        for conn in &mut taken.conns {
            if std::mem::take(&mut conn.life.used) {
                continue;
            }
            if let Some(found) = conn.stream.idle_state() {
                counts.idle_probes.fetch_add(1, Relaxed);
                failed(shared, conn, &found.into_error());
            } else if probe.is_some() {
                to_probe.push(conn.life.id());
            } else {
                counts.idle_probes.fetch_add(1, Relaxed);
            }
        }
    }
    let Some(probe) = probe else { return };
    for id in to_probe {
        // Out of bb8 alone: the others stay available while it is probed.
        let mut one = {
            let Some(e) = endpoint.upgrade() else { return };
            let mut taken = Taken::idle(&e);
            match taken.remove(id) {
                Some(one) => one,
                // Checked out meanwhile, or closed: not ours to probe.
                None => continue,
            }
        };
        let Some(conn) = one.conns.first_mut() else {
            continue;
        };
        // Closed, not given back half-way through an exchange, if the task ends mid-probe.
        conn.life.sweep = Some(Verdict::Close(Why::Aborted));
        let timeout = shared.config.connect_timeout;
        let result = match tokio::time::timeout(timeout, probe(&mut conn.stream)).await {
            Ok(Ok(())) => conn
                .stream
                .idle_state()
                .map_or(Ok(()), |found| Err(found.into_error())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle probe timed out",
            )),
        };
        counts.idle_probes.fetch_add(1, Relaxed);
        match result {
            Ok(()) => {
                conn.life.sweep = Some(Verdict::Keep);
                put_last(endpoint, one);
            }
            Err(e) => failed(shared, conn, &e),
        }
    }
}

/// Marks a connection that failed its idle probe: closed and counted when it goes back.
fn failed(shared: &Shared, conn: &mut PooledConnection<'static, TcpManager>, err: &io::Error) {
    tracing::debug!(
        pool = shared.config.name(),
        addr = &*shared.addr,
        endpoint = &*shared.addr,
        error = %err,
        "idle connection failed its probe"
    );
    conn.life.sweep = Some(Verdict::Close(Why::ProbeFailed));
}

/// Gives a probed connection back at the end of bb8's queue, where it was (it had not been
/// used since the last round): ahead of the others, it would be handed out next, and the
/// connections above `min_idle` would never sit idle long enough to close.
fn put_last(endpoint: &Weak<Endpoint>, probed: Taken) {
    match endpoint.upgrade() {
        Some(e) => {
            let others = Taken::idle(&e);
            drop(probed);
            drop(others);
        }
        None => drop(probed),
    }
}
