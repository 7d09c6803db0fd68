//! A blackholed backend (Linux): a listener whose accept queue is full, so that SYNs to it
//! are dropped and a connect hangs until its timeout; and [`syn_sent_to`], which sees such a
//! hanging connect in `/proc/net/tcp`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::wait::bounded;
use socket2::{Domain, Socket, Type};

/// Whether a socket on this host is in SYN_SENT towards `port` (`/proc/net/tcp`).
pub fn syn_sent_to(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let mut f = line.split_whitespace().skip(2);
        let (Some(remote), Some(state)) = (f.next(), f.next()) else {
            return false;
        };
        let remote_port = remote
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        remote_port == Some(port) && state == "02"
    })
}

/// A listener whose accept queue is full and never accepts: SYNs to it are dropped, a
/// connect hangs until its timeout.
pub struct Hole {
    pub addr: SocketAddr,
    /// Never accepted from (a test may start accepting: the backend is back).
    pub listener: Socket,
    /// The connections that fill its accept queue.
    pub fillers: Vec<Socket>,
}

impl Hole {
    pub async fn new() -> Hole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        listener.bind(&addr.into()).expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet");
        let mut fillers = Vec::new();
        while !syn_sent_to(addr.port()) && fillers.len() < 8 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            let _ = s.connect(&addr.into());
            fillers.push(s);
        }
        assert!(syn_sent_to(addr.port()), "could not fill the accept queue");
        // Drop the hanging filler; keep the queue full with the completed ones.
        fillers.pop();
        bounded("filler SYN gone", async {
            while syn_sent_to(addr.port()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        Hole {
            addr,
            listener,
            fillers,
        }
    }

    /// Waits until a connect to it hangs.
    pub async fn wait_syn_sent(&self) {
        bounded("an attempt hangs", async {
            while !syn_sent_to(self.addr.port()) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
}
