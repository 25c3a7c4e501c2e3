//! Accepting TCP sockets, plain or TLS: each holds a slot of its address's socket budget for as long as it is
//! open (an upgraded WebSocket included), must deliver its first request head within `request_head_timeout`
//! (an idle HTTP/1.1 keep-alive socket its next one within `keep_alive_timeout`), and is served HTTP/1.1 with
//! upgrades or HTTP/2.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::policy::rate::Slot;
use crate::policy::{Accept, Policy};
use crate::tls::Tls;

/// How long a client gets to complete the TLS handshake (the request-head deadline, shorter by default, applies too).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive pings: a peer that stops answering is dropped (an idle but live HTTP/2 connection stays,
/// bounded by the socket budget).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Pause after an accept error that is not about one connection (such as running out of file descriptors),
/// so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// How the listener treats sockets.
pub struct Edge {
    /// The socket budget and the refusal log.
    pub policy: Arc<Policy>,
    /// `request_head_timeout`, if on: the first request head (the socket's own deadline).
    pub head_timeout: Option<Duration>,
    /// `keep_alive_timeout`, if on: every later request head (hyper's header read timeout, which restarts when a
    /// keep-alive connection goes idle).
    pub keep_alive_timeout: Option<Duration>,
    /// TLS, if configured.
    pub tls: Option<Arc<Tls>>,
}

/// Accepts sockets and serves `router` on them until `shutdown` resolves, then waits for open connections;
/// with TLS, SIGHUP reloads the certificate.
pub async fn serve(
    edge: Edge,
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(edge.keep_alive_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    let mut refusing = builder.clone();
    refusing.http1().keep_alive(false);
    // Only with TLS: without a handler SIGHUP keeps its default meaning.
    let mut hangup = match edge.tls {
        Some(_) => Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        )?),
        None => None,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        if !is_connection_error(&e) {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        }
                        continue;
                    }
                };
                match edge.policy.accept_socket(peer.ip()) {
                    Accept::Serve(slot) => {
                        let received = Arc::new(AtomicBool::new(false));
                        let socket = Socket::new(stream, slot, edge.head_timeout, received.clone());
                        let service = router.clone().map_request(move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                            received.store(true, Ordering::Relaxed);
                            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                            req
                        });
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        let tls = edge.tls.clone();
                        tokio::spawn(async move {
                            match tls {
                                None => {
                                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(socket), TowerToHyperService::new(service));
                                    ended(peer, watcher.watch(conn.into_owned()).await);
                                }
                                Some(tls) => {
                                    let Some(stream) = handshake(&tls, socket, peer).await else { return };
                                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
                                    ended(peer, watcher.watch(conn.into_owned()).await);
                                }
                            }
                        });
                    }
                    // Answered while it lasts, so a client that sent a request reads why; never longer than the
                    // request-head deadline. Without that deadline nothing bounds it, so it is closed at once.
                    Accept::Refuse(slot) => match edge.head_timeout {
                        Some(deadline) => {
                            let builder = refusing.clone();
                            let tls = edge.tls.clone();
                            let received = Arc::new(AtomicBool::new(false));
                            let socket = Socket::new(stream, slot, None, received);
                            tokio::spawn(async move {
                                let _ = tokio::time::timeout(deadline, refuse(builder, tls, socket, peer)).await;
                            });
                        }
                        None => drop(stream),
                    },
                    Accept::Close => drop(stream),
                }
            }
            _ = hangup_signal(&mut hangup) => if let Some(tls) = &edge.tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate"),
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The next SIGHUP, or never without a handler.
async fn hangup_signal(h: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match h {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

/// Errors about one connection (it went away before being accepted), not about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn ended(peer: SocketAddr, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn handshake(
    tls: &Tls,
    socket: Socket,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<Socket>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(socket)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serves a socket over its address's budget: every request is answered 429 `rate_limited`, then it closes.
async fn refuse(
    builder: Builder<TokioExecutor>,
    tls: Option<Arc<Tls>>,
    socket: Socket,
    peer: SocketAddr,
) {
    let service = tower::service_fn(
        |_req: axum::extract::Request<hyper::body::Incoming>| async {
            Ok::<_, std::convert::Infallible>(
                crate::api::ApiError::new(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many open sockets from this address",
                )
                .into_response(),
            )
        },
    );
    let service = TowerToHyperService::new(service);
    let result = match tls {
        None => {
            builder
                .serve_connection(TokioIo::new(socket), service)
                .await
        }
        Some(tls) => {
            let Some(stream) = handshake(&tls, socket, peer).await else {
                return;
            };
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
    };
    ended(peer, result);
}

/// An accepted socket: holds its budget slot until dropped, and fails its reads once the request-head deadline
/// passes before the connection's first request arrived (hyper's own header timeout covers HTTP/1.1 heads, but
/// not the wait for the first bytes, where the server tells HTTP/1.1 from HTTP/2, nor an HTTP/2 connection that
/// never opens a stream).
pub struct Socket {
    io: TcpStream,
    _slot: Slot,
    head: Option<Head>,
}

struct Head {
    /// Set by the service when the first request arrives.
    received: Arc<AtomicBool>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Socket {
    fn new(
        io: TcpStream,
        slot: Slot,
        timeout: Option<Duration>,
        received: Arc<AtomicBool>,
    ) -> Self {
        Self {
            io,
            _slot: slot,
            head: timeout.map(|t| Head {
                received,
                deadline: Box::pin(tokio::time::sleep(t)),
            }),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if read.is_pending()
            && let Some(head) = &mut this.head
        {
            if head.received.load(Ordering::Relaxed) {
                this.head = None;
            } else if head.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within request_head_timeout",
                )));
            }
        }
        read
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
