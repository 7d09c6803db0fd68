//! What the proxy does to a connection ([`Fault`]), and what it has counted ([`ProxyStats`]).

use std::time::Duration;

use crate::rng::Rng;

/// What the proxy does to one connection. Faults act on the reply direction (backend to
/// client) unless said otherwise; several can be combined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fault {
    /// Delay each reply chunk by this much.
    pub latency: Option<Duration>,
    /// Accept, read and drop everything the client sends, never reply.
    pub blackhole: bool,
    /// Reset the client connection (RST) once this many reply bytes were forwarded since the
    /// fault was set (or the connection accepted); `Some(0)` resets at once.
    pub reset_after: Option<u64>,
    /// Close the connection from the server side after it was idle (no bytes either way) this
    /// long, like Redis `timeout`.
    pub idle_close: Option<Duration>,
    /// Half-close: send FIN to the client as soon as it writes, and forward nothing more.
    pub half_close: bool,
    /// Forward replies one byte at a time with this gap between segments.
    pub slice: Option<Duration>,
}

impl Fault {
    /// No fault: a transparent proxy.
    pub fn none() -> Fault {
        Fault::default()
    }
    /// Delay each reply chunk.
    pub fn latency(d: Duration) -> Fault {
        Fault {
            latency: Some(d),
            ..Fault::default()
        }
    }
    /// Accept, never reply.
    pub fn blackhole() -> Fault {
        Fault {
            blackhole: true,
            ..Fault::default()
        }
    }
    /// RST after `n` reply bytes (`0`: at once).
    pub fn reset_after(n: u64) -> Fault {
        Fault {
            reset_after: Some(n),
            ..Fault::default()
        }
    }
    /// Server-side close after `d` idle.
    pub fn idle_close(d: Duration) -> Fault {
        Fault {
            idle_close: Some(d),
            ..Fault::default()
        }
    }
    /// FIN while the client is writing.
    pub fn half_close() -> Fault {
        Fault {
            half_close: true,
            ..Fault::default()
        }
    }
    /// 1-byte reply segments, `gap` apart.
    pub fn slice(gap: Duration) -> Fault {
        Fault {
            slice: Some(gap),
            ..Fault::default()
        }
    }
}

/// What the proxy has seen from the client (pool) side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepts: usize,
    /// Connections open now: accepted, and neither closed by the proxy nor closed (FIN or
    /// RST received) by the client.
    pub open: usize,
    /// Most connections open at once.
    pub max_open: usize,
    /// Connections reset by a `reset_after` fault.
    pub resets: usize,
    /// Connections closed by an `idle_close` fault.
    pub idle_closes: usize,
    /// Connections half-closed by a `half_close` fault.
    pub half_closes: usize,
    /// Connections closed because the backend behind the proxy could not be reached or closed.
    pub upstream_closes: usize,
    /// Connections closed by [`Proxy::down`](super::Proxy::down).
    pub killed: usize,
}

impl Rng {
    /// One fault from the whole list (never `none`): latency, blackhole, reset at once or
    /// after a few bytes, server-side idle close, half-close, 1-byte slices.
    pub fn fault(&mut self) -> Fault {
        match self.below(7) {
            0 => Fault::latency(self.millis(1, 30)),
            1 => Fault::blackhole(),
            2 => Fault::reset_after(0),
            3 => Fault::reset_after(self.below(12)),
            4 => Fault::idle_close(self.millis(5, 50)),
            5 => Fault::half_close(),
            _ => Fault::slice(Duration::from_millis(1)),
        }
    }
}
