//! The lifecycle of an endpoint's connections, run by this crate instead of bb8: lifetimes
//! that do not expire together, `min_idle` without churn, and idle probing.
//!
//! # Why not bb8's reaper
//!
//! bb8's reaper wakes every `reaper_rate` and closes, in one batch, every idle connection
//! past `idle_timeout` or `max_lifetime`, the `min_idle` ones included, then opens new ones:
//! connections opened together expire together, and an idle service reconnects its
//! `min_idle` connections once per `idle_timeout` for nothing. bb8 has no way to list or
//! remove idle connections, so this cannot be changed from outside. The pool therefore
//! gives bb8 neither `idle_timeout` nor `max_lifetime` nor `min_idle` (bb8 then runs no
//! reaper and opens connections only for checkouts), and each endpoint gets one background
//! task of its own (`keeper`), started with the endpoint (when any of these settings is
//! on), holding only a weak reference to it: it ends when the endpoint is dropped or
//! removed from the set.
//!
//! # Lifetimes that don't expire together
//!
//! At connect, each connection draws its own deadline: `max_lifetime` less a random share
//! of it, up to `max_lifetime_jitter` (2.5 % by default, as HikariCP). The task keeps the
//! deadlines of the open connections in order and wakes at the earliest, not at a shared
//! tick: an idle connection is closed at its own deadline, one in use when it comes back.
//! `min_idle` is then refilled, so connections opened together (at start-up, after a
//! restart) are replaced one by one over the jitter window.
//!
//! # `min_idle` without churn
//!
//! `min_idle` connections are opened at start, and again after any connection of the
//! endpoint closes. The task has bb8 open them (`sweep::open`): with the idle queue
//! emptied for an instant, checkouts polled once find no connection and bb8 reserves a
//! place for each and opens it through the manager's connect (so fail-fast and the
//! reconnect backoff apply); dropped, they leave the new connections in the idle queue.
//! bb8's own count of open and pending connections keeps the endpoint within `max_size`:
//! a connection the task opened itself and handed to bb8 (`Pool::add`) could only be
//! refused once the backend had seen it, while checkouts were opening theirs. If connects
//! failed and `min_idle` is still short, the task asks again after a delay doubling from
//! 50 ms to 5 s. `TcpPoolBuilder::connect` opens the first `min_idle` itself, concurrently,
//! and returns the first connect error (nobody else can check out yet).
//!
//! Only connections above `min_idle` close for idleness (HikariCP's `idleTimeout`): while
//! more than `min_idle` connections are open, the task looks, when the oldest idle one above
//! `min_idle` would expire, for connections idle (since their last return) longer than
//! `idle_timeout`, and closes them, oldest first, while more than `min_idle` stay idle. The
//! `min_idle` connections stay open across any number of idle periods; `max_lifetime` still
//! replaces them.
//!
//! # Idle probing
//!
//! With `idle_probe_interval`, every interval the idle connections not used since the
//! previous round are checked (HikariCP's `keepaliveTime`): the non-blocking peek, then the
//! configured [`health_check`](crate::TcpPoolBuilder::health_check) probe if any, limited by
//! `connect_timeout`, one connection out of the pool at a time (the others stay available).
//! A dead one is closed (counted in `idle_probe_failures`) and the task refills up to
//! `min_idle` (HikariCP's `fillPool`): with `min_idle` 0 it is only closed. Probing itself
//! never opens a connection, never touches one in use, and does not grow the pool: a checkout
//! that finds no idle connection while one is being probed waits for it (or for another
//! to come back) instead of having bb8 open one (see the gate, below). HikariCP's keepalive
//! does not wait: a borrower then adds a connection.
//!
//! # Sweeps
//!
//! To look at its idle connections the task takes them out of bb8 (`sweep`): one poll of a
//! checkout per idle connection, synchronously, never awaiting while it holds them, with the
//! checkout health check skipped for that poll alone (a thread-local flag). It gives back
//! those it keeps last first, so bb8's most-recently-returned-first order is unchanged. A
//! connection given back by a sweep is not a return: its tracker, the endpoint's fail-fast
//! and outlier state are untouched. Those it closes are counted in `closed_idle_timeout`,
//! `closed_max_lifetime` or `idle_probe_failures`, not as discards nor as broken.
//!
//! # The checkout gate
//!
//! A checkout that ran while a sweep or a probe had the idle connections out of bb8 would
//! find none idle and have bb8 open one. So the first poll of each checkout (where bb8
//! takes an idle connection or decides to connect) never overlaps a sweep taking
//! connections out (`gate`): while no sweep holds any, a checkout counts itself in and out
//! with two atomic additions; while one does, it takes the lifecycle's lock, and if bb8 has
//! none idle, it waits for the sweep to give them back or for a connection in use to come
//! back (counted in `gets_waited` and `wait_time`, within `checkout_timeout`). A sweep waits
//! for the checkouts already in their first poll before it takes connections out. Every
//! later poll of a checkout goes through the gate too (never waiting there): bb8 looks for
//! another idle connection, or connects, after a health check fails, so a check that fails
//! under the gate's lock with connections out waits first, in the same way. With several
//! endpoints, a checkout waiting at one endpoint's gate chooses again if another has an
//! idle connection. The health check probe may thus run under the lock: `pool.state()`
//! called from it (on that thread) only tries the lock. The wait
//! is microseconds for a sweep, and the probe's round trip (at most `connect_timeout`) for a
//! probe: with `checkout_timeout` shorter than `connect_timeout`, a probe that hangs can
//! make such a checkout time out.
//!
//! # Cost on the request path
//!
//! A checkout reads one thread-local flag and makes two atomic additions per poll of bb8 (the
//! gate). A
//! return reads the gate's state, and the clock once when `max_lifetime` or `idle_timeout`
//! is set (bb8 did the same for `max_lifetime`), and writes
//! two fields of the connection's state; no lock, no allocation. That state is boxed, once
//! per connection: bb8 moves the pooled struct on every checkout and return, and 48 bytes
//! more in it cost about 750 instructions per request, the box 8 bytes. Measured with
//! callgrind through the router (`benches/callgrind.sh`): the eager layer +79 instructions
//! per request at one request in flight, +66 at 64 (about 0.4 %); the gate (with its review
//! fixes and the accept-and-close backoff) +188 and +116 (`benches/README.md`).

mod gate;
mod keeper;
mod lifetime;
mod probing;
mod state;
mod sweep;

pub(crate) use gate::AtGate;
pub(crate) use keeper::{fill, spawn};
pub(crate) use state::{parked, returned, swept_back, Life, Lifecycle};
pub(crate) use sweep::sweeping;
