//! Transports and clocks of the production driver that are not yet the encrypted links of the
//! runtime issue: [`UdpTransport`] (one datagram per frame, peers at fixed addresses) and
//! [`MonotonicClock`]. Both run unchanged under madsim, where `tokio::net` and `tokio::time` are
//! simulated.

use crate::driver::{Clock, Transport};
use paloma_core::{Instant, NodeId};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// Frames as UDP datagrams to peers at known addresses. Sends are best effort: an error is loss,
/// which the core tolerates.
///
/// Under madsim, `UdpSocket::recv_from` is not cancel-safe (madsim 0.2.34, `sim/net/endpoint.rs`:
/// a datagram handed to a registered receiver, or received and then delayed by `rand_delay`, is
/// lost when the future is dropped), and the driver drops the receive future whenever another
/// input wins its `select!`. That lost datagrams in a quiet network (rate not measured),
/// unplanned loss the Raft core survives but a forwarded reply does not hide. So under madsim a
/// reader task owns the receiving and hands datagrams over a channel, whose `recv` is
/// cancel-safe; tokio's `recv_from` is cancel-safe already and is used directly.
#[derive(Debug)]
pub struct UdpTransport {
    sock: std::sync::Arc<UdpSocket>,
    peers: BTreeMap<NodeId, SocketAddr>,
    /// `peers` inverted: who a datagram came from.
    senders: BTreeMap<SocketAddr, NodeId>,
    #[cfg(madsim)]
    inbox: Inbox,
}

/// Datagrams queued between the madsim reader task and the driver; beyond this they are dropped,
/// as a full socket buffer drops them.
#[cfg(madsim)]
const INBOX_DATAGRAMS_MAX: usize = 1024;

#[cfg(madsim)]
#[derive(Debug)]
struct Inbox {
    rx: tokio::sync::mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    reader: tokio::task::JoinHandle<()>,
}

#[cfg(madsim)]
impl Drop for Inbox {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(madsim)]
fn spawn_reader(sock: std::sync::Arc<UdpSocket>, frame_bytes_max: usize) -> Inbox {
    let (tx, rx) = tokio::sync::mpsc::channel(INBOX_DATAGRAMS_MAX);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; frame_bytes_max];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            match tx.try_send((buf[..n].to_vec(), from)) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    Inbox { rx, reader }
}

impl UdpTransport {
    /// Binds `addr` and sends to `peers`.
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> std::io::Result<UdpTransport> {
        let sock = std::sync::Arc::new(UdpSocket::bind(addr).await?);
        let senders = invert(&peers);
        Ok(UdpTransport {
            #[cfg(madsim)]
            // The largest datagram UDP carries; a longer frame cannot arrive.
            inbox: spawn_reader(sock.clone(), 64 << 10),
            sock,
            peers,
            senders,
        })
    }

    /// The address the socket is bound to (to learn a port the OS picked).
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Replaces the peer table (peers bound to OS-picked ports are known only after binding).
    pub fn set_peers(&mut self, peers: BTreeMap<NodeId, SocketAddr>) {
        self.senders = invert(&peers);
        self.peers = peers;
    }

    /// The peer table.
    #[must_use]
    pub fn peers(&self) -> &BTreeMap<NodeId, SocketAddr> {
        &self.peers
    }
}

impl Transport for UdpTransport {
    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, Option<NodeId>)> {
        // tokio's `recv_from` is cancel-safe; madsim's is not, hence the reader task there.
        #[cfg(not(madsim))]
        let (n, from) = self.sock.recv_from(buf).await?;
        #[cfg(madsim)]
        let (n, from) = {
            let Some((datagram, from)) = self.inbox.rx.recv().await else {
                return Err(std::io::Error::other("the UDP reader task ended"));
            };
            let n = buf.len().min(datagram.len());
            buf[..n].copy_from_slice(&datagram[..n]);
            // A longer datagram reports its real length: the driver counts it as malformed.
            (datagram.len(), from)
        };
        // A datagram's source address is not authentication (the encrypted links of the runtime
        // issue are): it only routes replies, and the Raft envelope names its own sender.
        Ok((n, self.senders.get(&from).copied()))
    }

    async fn send(&mut self, to: NodeId, frame: &[u8]) {
        let Some(&addr) = self.peers.get(&to) else {
            return;
        };
        // madsim's `send_to` takes (dst, buf), the reverse of tokio's (madsim 0.2.34).
        #[cfg(madsim)]
        let _ = self.sock.send_to(addr, frame).await;
        #[cfg(not(madsim))]
        let _ = self.sock.send_to(frame, addr).await;
    }
}

fn invert(peers: &BTreeMap<NodeId, SocketAddr>) -> BTreeMap<SocketAddr, NodeId> {
    peers.iter().map(|(&id, &addr)| (addr, id)).collect()
}

/// The runtime's monotonic clock from an epoch taken at start, and the system wall clock. Under
/// madsim both are the simulated clocks.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    epoch: tokio::time::Instant,
}

impl MonotonicClock {
    /// A clock whose `now()` counts from this moment.
    #[must_use]
    #[allow(clippy::disallowed_methods)] // the runtime is where the clock is read (ARCHITECTURE.md)
    pub fn start() -> MonotonicClock {
        MonotonicClock {
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    #[allow(clippy::disallowed_methods)] // the runtime is where the clock is read (ARCHITECTURE.md)
    fn now(&self) -> Instant {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        Instant::from_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    fn unix_ms(&self) -> u64 {
        #[allow(clippy::disallowed_methods)]
        // the runtime is where the clock is read (ARCHITECTURE.md)
        let now = std::time::SystemTime::now();
        now.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send {
        let at = self.epoch + std::time::Duration::from_nanos(deadline.as_nanos());
        tokio::time::sleep_until(at)
    }
}
