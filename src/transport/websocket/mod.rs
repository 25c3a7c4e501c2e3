//! A WebSocket server (RFC 6455) with permessage-deflate (RFC 7692), built for fan-out: frames are appended
//! to a per-connection buffer and written with one syscall per batch, and a message compressed once (no
//! context takeover) can be sent to every connection that negotiated compression.
//!
//! It serves Herald's plain WebSocket protocol, where browsers offer compression and one event goes to many
//! connections; the Engine.IO transport reuses its handshake and framing (without compression).

pub mod deflate;
pub mod frame;

use std::io;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use frame::{FrameError, OpCode};

/// The GUID of RFC 6455's accept-key computation.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Read buffer kept while idle; anything larger is released once drained.
const IDLE_READ_BUFFER: usize = 1024;
/// Write buffer capacity kept between batches.
const IDLE_WRITE_BUFFER: usize = 16 << 10;

/// Why an upgrade request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not a WebSocket upgrade (method, `Upgrade`, `Connection` or key missing or wrong).
    #[error("not a WebSocket upgrade request: {0}")]
    NotUpgrade(&'static str),
    /// A protocol version other than 13: answer 426 with `Sec-WebSocket-Version: 13` (RFC 6455 4.2.2).
    #[error("unsupported WebSocket version; this server speaks version 13")]
    UnsupportedVersion,
}

/// An accepted upgrade: send the response, then `connect` once the connection is handed over.
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    deflate: bool,
}

/// Checks an upgrade request and builds the 101 response; compression is negotiated when `allow_deflate`.
pub fn accept(
    req: &mut Request,
    allow_deflate: bool,
) -> Result<(Response, Upgrade), HandshakeError> {
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(HandshakeError::NotUpgrade("method must be GET"));
    }
    if !header_has(headers, header::CONNECTION, "upgrade")
        || !header_has(headers, header::UPGRADE, "websocket")
    {
        return Err(HandshakeError::NotUpgrade(
            "missing `Connection: upgrade` / `Upgrade: websocket`",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::NotUpgrade("missing Sec-WebSocket-Key"))?;
    let accept_key = accept_key(key.as_bytes());
    let extension = allow_deflate
        .then(|| {
            headers
                .get(header::SEC_WEBSOCKET_EXTENSIONS)
                .and_then(|v| v.to_str().ok())
        })
        .flatten()
        .and_then(deflate::negotiate);
    let on_upgrade =
        req.extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(HandshakeError::NotUpgrade(
                "the connection cannot be upgraded",
            ))?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept_key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(ext) = extension {
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(ext),
        );
    }
    Ok((
        response,
        Upgrade {
            on_upgrade,
            deflate: extension.is_some(),
        },
    ))
}

/// `Sec-WebSocket-Accept` for a client's key.
fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Upgrade {
    /// Whether permessage-deflate was negotiated.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// Waits for the upgraded connection and hands it over as is, for transports that run their own loop.
    pub async fn into_upgraded(self) -> io::Result<Upgraded> {
        self.on_upgrade.await.map_err(io::Error::other)
    }

    /// Waits for the upgraded connection; messages larger than `max_message` are refused.
    pub async fn connect(self, max_message: usize) -> io::Result<(Reader, Writer)> {
        let upgraded = self.on_upgrade.await.map_err(io::Error::other)?;
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        let reader = Reader {
            io: read,
            buf: BytesMut::new(),
            deflate: self.deflate,
            max: max_message,
            partial: None,
        };
        Ok((
            reader,
            Writer {
                io: write,
                buf: BytesMut::new(),
            },
        ))
    }
}

/// A message from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// A ping (answer with [`Writer::pong`]).
    Ping(Bytes),
    /// A pong.
    Pong,
    /// The client is closing, with its status code if it gave one.
    Close(Option<u16>),
}

/// What went wrong reading; each maps to the close code that says why.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The client broke the framing rules.
    #[error(transparent)]
    Protocol(#[from] FrameError),
    /// A message beyond the size limit.
    #[error("message too big")]
    TooBig,
    /// A text message that is not UTF-8.
    #[error("text message is not UTF-8")]
    InvalidUtf8,
    /// Compressed data that does not inflate.
    #[error("{0}")]
    BadCompression(&'static str),
}

impl ReadError {
    /// The close code and reason to send for this error.
    pub fn close_code(&self) -> (u16, &'static str) {
        match self {
            ReadError::Io(_) => (1006, ""),
            ReadError::Protocol(FrameError::TooBig(_)) | ReadError::TooBig => {
                (1009, "message too big")
            }
            ReadError::Protocol(_) | ReadError::BadCompression(_) => (1002, "protocol error"),
            ReadError::InvalidUtf8 => (1007, "invalid UTF-8"),
        }
    }
}

/// The reading half of a connection.
pub struct Reader {
    io: ReadHalf<TokioIo<Upgraded>>,
    buf: BytesMut,
    deflate: bool,
    max: usize,
    /// A fragmented message being assembled: its opcode, whether compressed, and the bytes so far.
    partial: Option<(OpCode, bool, BytesMut)>,
}

impl Reader {
    /// The next message; `Ok(None)` when the peer closed the TCP connection. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            while let Some(f) = frame::parse(&mut self.buf, self.max, self.deflate)? {
                if let Some(msg) = self.take(f)? {
                    if self.buf.is_empty() && self.buf.capacity() > IDLE_READ_BUFFER {
                        self.buf = BytesMut::new();
                    }
                    return Ok(Some(msg));
                }
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(IDLE_READ_BUFFER);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    fn take(&mut self, f: frame::Frame) -> Result<Option<Incoming>, ReadError> {
        let (opcode, compressed, payload) = match f.opcode {
            OpCode::Ping => return Ok(Some(Incoming::Ping(f.payload))),
            OpCode::Pong => return Ok(Some(Incoming::Pong)),
            OpCode::Close => {
                let code = (f.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                return Ok(Some(Incoming::Close(code)));
            }
            OpCode::Continuation => {
                let Some((op, compressed, mut data)) = self.partial.take() else {
                    return Err(FrameError::BadControl.into());
                };
                if data.len() + f.payload.len() > self.max {
                    return Err(ReadError::TooBig);
                }
                data.extend_from_slice(&f.payload);
                if !f.fin {
                    self.partial = Some((op, compressed, data));
                    return Ok(None);
                }
                (op, compressed, data.freeze())
            }
            op @ (OpCode::Text | OpCode::Binary) => {
                if self.partial.is_some() {
                    return Err(FrameError::BadControl.into());
                }
                if !f.fin {
                    self.partial = Some((op, f.rsv1, BytesMut::from(&f.payload[..])));
                    return Ok(None);
                }
                (op, f.rsv1, f.payload)
            }
        };
        let payload = if compressed {
            Bytes::from(deflate::decompress(&payload, self.max).map_err(|e| {
                if e.contains("limit") {
                    ReadError::TooBig
                } else {
                    ReadError::BadCompression(e)
                }
            })?)
        } else {
            payload
        };
        Ok(Some(match opcode {
            OpCode::Text => Incoming::Text(
                String::from_utf8(payload.into()).map_err(|_| ReadError::InvalidUtf8)?,
            ),
            _ => Incoming::Binary(payload),
        }))
    }
}

/// The writing half: frames accumulate in a buffer and go out with [`Writer::flush`].
pub struct Writer {
    io: WriteHalf<TokioIo<Upgraded>>,
    buf: BytesMut,
}

impl Writer {
    /// Queues a text message; `compressed` means `payload` is already deflated (see [`deflate::compress`]).
    pub fn text(&mut self, payload: &[u8], compressed: bool) {
        frame::write(&mut self.buf, OpCode::Text, compressed, payload);
    }

    /// Queues a ping.
    pub fn ping(&mut self) {
        frame::write(&mut self.buf, OpCode::Ping, false, &[]);
    }

    /// Queues a pong echoing `payload`.
    pub fn pong(&mut self, payload: &[u8]) {
        frame::write(&mut self.buf, OpCode::Pong, false, payload);
    }

    /// Queues a close frame.
    pub fn close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        frame::write(&mut self.buf, OpCode::Close, false, &payload);
    }

    /// Writes everything queued in one go.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
            if self.buf.capacity() > IDLE_WRITE_BUFFER {
                self.buf = BytesMut::new();
            }
        }
        self.io.flush().await
    }

    /// Flushes, then shuts the write side down.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_the_rfc_accept_key() {
        let mut req = Request::builder()
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header(
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            )
            .body(Body::empty())
            .unwrap();
        // Without hyper's upgrade extension the request is refused, after the header checks passed.
        assert!(
            matches!(accept(&mut req, true), Err(HandshakeError::NotUpgrade(m)) if m.contains("cannot be upgraded"))
        );
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
