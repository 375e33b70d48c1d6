//! A TLS listener for `axum::serve` that hands each request the peer's verified identity
//! (`ConnectInfo<PeerInfo>`). Handshakes run in their own tasks with a deadline, so a slow
//! or hostile client cannot hold up the others. Optionally, plain HTTP is accepted on the
//! same port from loopback peers (the admin's local operators): a connection whose first
//! byte is not a TLS handshake record is served in the clear, marked as such.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::{peer_of, Peer};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The verified client certificate's holder; `None` without a client certificate.
    pub peer: Option<Peer>,
    /// Whether the connection is TLS (else plain HTTP from loopback).
    pub tls: bool,
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A connection: TLS, or plain from loopback.
pub enum Conn {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Accepts TLS connections (and, if allowed, plain ones from loopback).
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Conn, PeerInfo)>,
}

impl TlsListener {
    /// Serves `tcp` with `config`; `plain_from_loopback` lets loopback peers speak plain HTTP.
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        plain_from_loopback: bool,
    ) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let conn =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, addr, acceptor, plain_from_loopback))
                            .await;
                    match conn {
                        Ok(Ok(c)) => {
                            let _ = tx.send(c).await;
                        }
                        Ok(Err(e)) => tracing::info!("refused a connection from {addr}: {e}"),
                        Err(_) => tracing::info!(
                            "refused a connection from {addr}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
                        ),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    plain_from_loopback: bool,
) -> io::Result<(Conn, PeerInfo)> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before sending anything"));
    }
    // 0x16: a TLS handshake record.
    if first[0] != 0x16 {
        if plain_from_loopback && addr.ip().is_loopback() {
            return Ok((Conn::Plain(stream), PeerInfo { addr, peer: None, tls: false }));
        }
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "plain HTTP on a TLS port (use https:// with the domain CA and a certificate of the domain)",
        ));
    }
    let tls = acceptor.accept(stream).await?;
    let peer = {
        let (_, conn) = tls.get_ref();
        match conn.peer_certificates() {
            Some([ee, rest @ ..]) => {
                Some(peer_of(ee, rest).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?)
            }
            _ => None,
        }
    };
    Ok((Conn::Tls(Box::new(tls)), PeerInfo { addr, peer, tls: true }))
}

impl axum::serve::Listener for TlsListener {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(PeerInfo { addr: self.local, peer: None, tls: true })
    }
}
