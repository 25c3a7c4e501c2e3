//! HTTP long-polling transport: the held GET that drains the session's queue, and the
//! POST that carries client packets. At most one of each may be in flight per session.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::packet::{decode_payload, encode_payload};
use super::session::{CloseReason, PollBatch, Session};

/// A 200 polling response with the reference's headers.
pub(crate) fn text_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=UTF-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn bad_request() -> Response {
    StatusCode::BAD_REQUEST.into_response()
}

/// Clears the in-flight flag even if the client goes away while the request is held.
struct InFlight<'a> {
    session: &'a Session,
    get: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.session.state.lock();
        if self.get {
            st.get_active = false;
        } else {
            st.post_active = false;
        }
    }
}

/// Marks a GET/POST in flight; an overlapping request closes the session (reference behaviour).
fn begin(session: &Session, get: bool) -> Option<InFlight<'_>> {
    {
        let mut st = session.state.lock();
        let flag = if get {
            &mut st.get_active
        } else {
            &mut st.post_active
        };
        if !*flag {
            *flag = true;
            return Some(InFlight { session, get });
        }
    }
    tracing::debug!(sid = session.sid(), get, "overlapping polling request");
    session.close(CloseReason::TransportError);
    None
}

/// GET: held until there is something to send (ping, data, noop during upgrade, or close).
pub(crate) async fn get(session: Arc<Session>) -> Response {
    let Some(_in_flight) = begin(&session, true) else {
        return bad_request();
    };
    loop {
        let wake = session.poll_wake.notified();
        match session.take_poll_batch() {
            PollBatch::Frames(frames) => return text_response(Body::from(encode_payload(&frames))),
            PollBatch::Wait => wake.await,
        }
    }
}

/// POST: decodes the payload and hands the packets to the session in order.
pub(crate) async fn post(session: Arc<Session>, req: Request) -> Response {
    let Some(_in_flight) = begin(&session, false) else {
        return bad_request();
    };
    let max = session.max_payload();
    let headers = req.headers();
    // EIO v4 polling binary is always base64 text; the reference rejects octet-stream.
    if headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"))
    {
        session.close(CloseReason::TransportError);
        return bad_request();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max) {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let body = match read_body(req.into_body(), max).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
        Err(BodyError::Io) => return bad_request(),
    };
    let packets = match decode_payload(body) {
        Ok(packets) => packets,
        Err(e) => {
            tracing::debug!(sid = session.sid(), error = %e, "invalid polling payload");
            session.close(CloseReason::ParseError);
            return bad_request();
        }
    };
    for packet in packets {
        session.receive(packet).await;
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "ok").into_response()
}

enum BodyError {
    TooLarge,
    Io,
}

async fn read_body(body: Body, max: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Io)?;
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
