//! DNS re-resolution (`resolve_endpoints`): each configured host name is looked up at an
//! interval, and every address it gives is an endpoint.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::replicas::Endpoints;

/// Starts the task that resolves `set`'s names now and then every `every` (or at once when
/// they change). It holds no handle of the pool between lookups, and ends with the pool.
pub(crate) fn spawn(set: &Arc<Endpoints>, every: Duration) {
    let weak: Weak<Endpoints> = Arc::downgrade(set);
    let changed: Arc<Notify> = set.names_changed.clone();
    tokio::spawn(async move {
        loop {
            let mut notified = pin!(changed.notified());
            notified.as_mut().enable();
            let Some(names) = weak
                .upgrade()
                .filter(|set| !set.is_closed())
                .map(|set| set.names())
            else {
                return;
            };
            let resolved = resolve(&names).await;
            let Some(set) = weak.upgrade() else {
                return;
            };
            if set.is_closed() {
                return;
            }
            set.apply_resolved(&names, resolved);
            drop(set);
            // The interval, or a change of names, whichever comes first.
            let _ = tokio::time::timeout(every, notified).await;
        }
    });
}

/// The addresses of each name, in the names' order (sorted and without duplicates within
/// a name); `None` for a name whose lookup failed or gave nothing.
async fn resolve(names: &[String]) -> Vec<Option<Vec<SocketAddr>>> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if name.starts_with("unix:") {
            // A socket path: nothing to resolve, the endpoint stays as it is.
            out.push(None);
            continue;
        }
        let found = match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                (!addrs.is_empty()).then_some(addrs)
            }
            Err(e) => {
                tracing::warn!(name = %name, error = %e, "resolving endpoint name failed; keeping its endpoints");
                None
            }
        };
        out.push(found);
    }
    out
}
