//! Cutting a TCP connection from outside its HTTP dispatcher.
//!
//! A client that stops reading leaves its connection's writer parked on a full socket, where a
//! close frame can never get through. `shutdown(2)` on the socket makes that pending write fail
//! at once, so the connection ends (see `upgrade`).

use std::{
    any::Any,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use actix_web::dev::Extensions;
use ai_gateway_actors::ConnectionAbort;
use socket2::SockAddr;

/// The socket of one accepted connection, kept in the connection's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ConnSocket {
    fd: RawFd,
    peer: Option<SocketAddr>,
}

/// Counts the node's open TCP connections: one guard lives in each connection's extensions
/// and is dropped with the connection (an upgraded one holds it until its socket closes, see
/// `upgrade`).
pub struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server's `on_connect` hook: records each connection's socket and counts it in `open`.
pub fn record_socket(open: &Arc<AtomicUsize>, conn: &dyn Any, ext: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        // Chunks are small frames: without this, Nagle holds each one until the previous is
        // acknowledged, and a delayed ACK makes that a 40 ms stall.
        let _ = tcp.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        ext.insert(Rc::new(OpenGuard(open.clone())));
        ext.insert(ConnSocket {
            fd: tcp.as_raw_fd(),
            peer: tcp.peer_addr().ok(),
        });
    }
}

impl ConnSocket {
    fn current_peer(&self) -> Option<SocketAddr> {
        // SAFETY: getpeername only writes within the storage and length socket2 hands it.
        let (_, addr) = unsafe {
            SockAddr::try_init(|storage, len| {
                if libc::getpeername(self.fd, storage.cast(), len) == -1 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            })
        }
        .ok()?;
        addr.as_socket()
    }
}

impl ConnSocket {
    /// `shutdown(2)` on the socket, if it still is this connection's.
    fn shutdown(&self, how: libc::c_int) {
        // The session and its dispatcher share one worker thread, so the connection cannot be
        // closed between this check and the shutdown; the peer check guards against the fd
        // having been closed and reused for another connection earlier.
        if self.peer.is_some() && self.current_peer() == self.peer {
            // SAFETY: shutdown takes a plain descriptor and touches no memory of ours.
            unsafe { libc::shutdown(self.fd, how) };
        }
    }
}

impl ConnectionAbort for ConnSocket {
    fn abort(&self) {
        self.shutdown(libc::SHUT_RDWR);
    }

    /// Shuts the read side: the connection reads end-of-stream, writes what it still holds (the
    /// close frame), then closes, instead of lingering for the client's FIN up to
    /// `client_disconnect_timeout`.
    fn end_after_writes(&self) {
        self.shutdown(libc::SHUT_RD);
    }
}
