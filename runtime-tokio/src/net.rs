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
#[derive(Debug)]
pub struct UdpTransport {
    sock: UdpSocket,
    peers: BTreeMap<NodeId, SocketAddr>,
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
        let sock = UdpSocket::bind(addr).await?;
        Ok(UdpTransport { sock, peers })
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
        self.peers = peers;
    }

    /// The peer table.
    #[must_use]
    pub fn peers(&self) -> &BTreeMap<NodeId, SocketAddr> {
        &self.peers
    }
}

impl Transport for UdpTransport {
    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // `recv_from` is cancel-safe in tokio and in madsim.
        let (n, _from) = self.sock.recv_from(buf).await?;
        Ok(n)
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
