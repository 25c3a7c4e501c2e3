//! A minimal Server-Sent Events client for load generation: one HTTP/1.1 streaming `GET` on a raw TCP socket,
//! an incremental chunked-transfer decoder and an incremental `text/event-stream` parser. After the response
//! head, nothing is allocated per message: each connection owns one read buffer and the parser's line/data
//! buffers, which grow to the largest record once and are then reused.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest line the parser accepts (a Herald event is at most 64 KiB of JSON plus its envelope).
const MAX_LINE: usize = 1 << 20;
/// Per-connection read buffer; also the limit for the response head.
const READ_BUF: usize = 16 * 1024;

/// One dispatched SSE record.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A record with `data:` lines: `name` is the `event:` field (`message` when absent), `data` the data lines
    /// joined by `\n`.
    Event { name: &'a [u8], data: &'a [u8] },
    /// A record with fields but no data (`retry:`/`id:` only, as Herald opens every stream): the browser updates
    /// its last event id and dispatches nothing.
    Control,
}

/// Incremental `text/event-stream` parser (WHATWG HTML "event stream interpretation"): lines end in CRLF, LF or
/// CR; `:` starts a comment; `field: value` with one optional space; a blank line dispatches.
#[derive(Default)]
pub struct Parser {
    /// The current line when it spans reads.
    line: Vec<u8>,
    /// The previous input ended in CR: a leading LF belongs to it.
    after_cr: bool,
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    has_fields: bool,
}

impl Parser {
    /// Feeds `input`, calling `f` for every record it completes. An error (a line over 1 MiB) leaves the parser
    /// unusable: the caller should drop the connection.
    pub fn feed(&mut self, mut input: &[u8], f: &mut dyn FnMut(Record<'_>)) -> Result<()> {
        if self.after_cr {
            self.after_cr = false;
            if let [b'\n', rest @ ..] = input {
                input = rest;
            }
        }
        while !input.is_empty() {
            let Some(end) = input.iter().position(|&c| c == b'\n' || c == b'\r') else {
                if self.line.len() + input.len() > MAX_LINE {
                    bail!("an event-stream line longer than {MAX_LINE} bytes");
                }
                self.line.extend_from_slice(input);
                return Ok(());
            };
            let mut next = end + 1;
            if input[end] == b'\r' {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() {
                self.line_done(&input[..end], f);
            } else {
                if self.line.len() + end > MAX_LINE {
                    bail!("an event-stream line longer than {MAX_LINE} bytes");
                }
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..end]);
                self.line_done(&line, f);
                line.clear();
                self.line = line;
            }
            input = &input[next..];
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], f: &mut dyn FnMut(Record<'_>)) {
        if line.is_empty() {
            if self.has_data {
                let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
                let name = if self.event.is_empty() {
                    &b"message"[..]
                } else {
                    &self.event
                };
                f(Record::Event { name, data });
            } else if self.has_fields {
                f(Record::Control);
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            self.has_fields = false;
            return;
        }
        if line[0] == b':' {
            return; // comment (Herald's `: heartbeat`)
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        self.has_fields = true;
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            _ => {} // id, retry and unknown fields: nothing to do for a load generator
        }
    }
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line: the value so far and whether any digit was seen.
    Size(u64, bool),
    /// Skipping a chunk extension up to the line end.
    Ext(u64),
    /// Saw CR after the size; LF must follow.
    SizeLf(u64),
    /// Inside chunk data, this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section after the last chunk; `true` at the start of a line.
    Trailer(bool),
    TrailerLf,
    Done,
}

/// Incremental HTTP/1.1 body decoder: chunked, or everything until EOF.
pub struct Body {
    chunked: bool,
    state: Chunk,
}

impl Body {
    pub fn new(chunked: bool) -> Self {
        Self {
            chunked,
            state: Chunk::Size(0, false),
        }
    }

    /// Decodes `input`, passing body bytes to `out` as they are found; `Ok(true)` once the body has ended.
    pub fn decode(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<bool> {
        if !self.chunked {
            if !input.is_empty() {
                out(input)?;
            }
            return Ok(false);
        }
        while let Some((&c, rest)) = input.split_first() {
            self.state = match self.state {
                Chunk::Data(left) => {
                    let n = left.min(input.len() as u64) as usize;
                    out(&input[..n])?;
                    input = &input[n..];
                    self.state = if left == n as u64 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                    continue;
                }
                Chunk::Size(v, any) => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (c as char).to_digit(16).unwrap_or(0) as u64;
                        match v.checked_mul(16).and_then(|v| v.checked_add(d)) {
                            Some(v) if v < 1 << 40 => Chunk::Size(v, true),
                            _ => bail!("chunk size too large"),
                        }
                    }
                    b';' | b' ' | b'\t' if any => Chunk::Ext(v),
                    b'\r' if any => Chunk::SizeLf(v),
                    b'\n' if any => Self::after_size(v),
                    _ => bail!("bad chunk size byte {:?}", c as char),
                },
                Chunk::Ext(v) => match c {
                    b'\r' => Chunk::SizeLf(v),
                    b'\n' => Self::after_size(v),
                    _ => Chunk::Ext(v),
                },
                Chunk::SizeLf(v) if c == b'\n' => Self::after_size(v),
                Chunk::DataCr if c == b'\r' => Chunk::DataLf,
                Chunk::DataCr | Chunk::DataLf if c == b'\n' => Chunk::Size(0, false),
                Chunk::Trailer(true) if c == b'\r' => Chunk::TrailerLf,
                Chunk::Trailer(_) if c == b'\n' => {
                    if self.state == Chunk::Trailer(true) {
                        Chunk::Done
                    } else {
                        Chunk::Trailer(true)
                    }
                }
                Chunk::Trailer(_) => Chunk::Trailer(false),
                Chunk::TrailerLf if c == b'\n' => Chunk::Done,
                Chunk::Done => bail!("bytes after the end of the chunked body"),
                s => bail!("bad chunked framing: {:?} in state {s:?}", c as char),
            };
            input = rest;
        }
        Ok(self.state == Chunk::Done)
    }

    fn after_size(v: u64) -> Chunk {
        if v == 0 {
            Chunk::Trailer(true)
        } else {
            Chunk::Data(v)
        }
    }
}

/// A response head: status, whether the body is chunked, and where the body starts in the buffer.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub event_stream: bool,
    pub len: usize,
}

/// Parses a response head from the start of `b`; `Ok(None)` if it is not complete yet.
pub fn parse_head(b: &[u8]) -> Result<Option<Head>> {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&b[..end]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = match status_line.split(' ').collect::<Vec<_>>()[..] {
        [v, code, ..] if v.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    }
    .with_context(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut event_stream) = (false, false);
    for l in lines {
        let (name, value) = l.split_once(':').unwrap_or((l, ""));
        let value = value.trim().to_ascii_lowercase();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.contains("chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            event_stream = value.starts_with("text/event-stream");
        }
    }
    Ok(Some(Head {
        status,
        chunked,
        event_stream,
        len: end + 4,
    }))
}

/// `/PREFIX/seg/seg` for `channel`: `:` separates path segments (Herald joins them back with `:`), everything
/// but unreserved characters is percent-encoded.
pub fn channel_path(prefix: &str, channel: &str) -> String {
    let mut p = prefix.trim_end_matches('/').to_string();
    for seg in channel.split(':') {
        p.push('/');
        for &c in seg.as_bytes() {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                p.push(c as char);
            } else {
                p.push_str(&format!("%{c:02X}"));
            }
        }
    }
    p
}

/// One open event stream.
pub struct Conn {
    tcp: TcpStream,
    buf: Box<[u8]>,
    /// Body bytes already in `buf` after the head, not yet parsed.
    pending: std::ops::Range<usize>,
    body: Body,
    parser: Parser,
}

impl Conn {
    /// Connects, sends `GET path` and reads a `200 text/event-stream` response head.
    pub async fn open(addr: SocketAddr, host: &str, path: &str) -> Result<Self> {
        let mut tcp = TcpStream::connect(addr).await.context("tcp connect")?;
        tcp.set_nodelay(true)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.context("sending GET")?;
        let mut buf = vec![0u8; READ_BUF].into_boxed_slice();
        let mut filled = 0;
        let head = loop {
            if filled == buf.len() {
                bail!("response head over {READ_BUF} bytes");
            }
            let n = tcp.read(&mut buf[filled..]).await.context("reading head")?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            filled += n;
            if let Some(h) = parse_head(&buf[..filled])? {
                break h;
            }
        };
        if head.status != 200 || !head.event_stream {
            let body = String::from_utf8_lossy(&buf[head.len..filled]);
            bail!(
                "HTTP {} (event-stream: {}): {body:.200}",
                head.status,
                head.event_stream
            );
        }
        Ok(Self {
            tcp,
            buf,
            pending: head.len..filled,
            body: Body::new(head.chunked),
            parser: Parser::default(),
        })
    }

    /// Reads once (or takes what the head read left over) and passes each completed record to `f`.
    /// `Ok(false)` when the stream ended.
    pub async fn read(&mut self, f: &mut dyn FnMut(Record<'_>)) -> Result<bool> {
        let range = if self.pending.is_empty() {
            let n = self.tcp.read(&mut self.buf).await.context("read")?;
            if n == 0 {
                return Ok(false);
            }
            0..n
        } else {
            std::mem::replace(&mut self.pending, 0..0)
        };
        let parser = &mut self.parser;
        let ended = self
            .body
            .decode(&self.buf[range], &mut |b| parser.feed(b, f))?;
        Ok(!ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `input` through chunked decoding and parsing, split at every `step` bytes.
    fn run(input: &[u8], chunked: bool, step: usize) -> Result<Vec<String>> {
        let (mut body, mut parser, mut out) = (Body::new(chunked), Parser::default(), Vec::new());
        for part in input.chunks(step.max(1)) {
            body.decode(part, &mut |b| {
                parser.feed(b, &mut |r| {
                    out.push(match r {
                        Record::Event { name, data } => format!(
                            "{}={}",
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(data)
                        ),
                        Record::Control => "control".into(),
                    })
                })
            })?;
        }
        Ok(out)
    }

    fn chunk(s: &str) -> String {
        format!("{:x}\r\n{s}\r\n", s.len())
    }

    #[test]
    fn parses_herald_streams_split_anywhere() {
        let records = [
            "retry: 2000\nid: ab12:0\n\n",
            "id: ab12:1\nevent: tick\ndata: {\"seq\":1,\"t\":17}\n\n",
            ": heartbeat\n\n",
            "id: ab12:2\nevent: tick\ndata: {\"seq\":2,\"t\":18}\n\nid: ab12:3\nevent: herald:gap\ndata: {\"from\":3}\n\n",
            "data:a\r\ndata:b\r\rdata\r\n\r\n",
        ];
        let mut body: String = records.iter().map(|r| chunk(r)).collect();
        body.push_str("0\r\n\r\n");
        let want = [
            "control",
            r#"tick={"seq":1,"t":17}"#,
            r#"tick={"seq":2,"t":18}"#,
            r#"herald:gap={"from":3}"#,
            "message=a\nb",
            "message=",
        ];
        for step in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(
                run(body.as_bytes(), true, step).unwrap(),
                want,
                "step {step}"
            );
            let plain: String = records.concat();
            assert_eq!(
                run(plain.as_bytes(), false, step).unwrap(),
                want,
                "step {step}"
            );
        }
        let mut b = Body::new(true);
        assert!(
            b.decode(b"0;ext=1\r\nX-T: 1\r\n\r\n", &mut |_| Ok(()))
                .unwrap()
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &b"zz\r\nab\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"3\r\nabc\rX",
            b"ffffffffffffffffffff\r\n",
            b"0\r\n\r\nmore",
            b";\r\n",
        ] {
            for step in [1, 3, 100] {
                assert!(
                    run(bad, true, step).is_err(),
                    "{:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        // A line over the limit, fed in pieces.
        let mut p = Parser::default();
        let big = vec![b'x'; 64 * 1024];
        let mut res = Ok(());
        for _ in 0..20 {
            res = res.and_then(|()| p.feed(&big, &mut |_| {}));
        }
        assert!(res.is_err());
        // Garbage that is not SSE parses without panicking and dispatches nothing useful.
        assert_eq!(
            run(b"\x00\xff:::\n\n\n\xc3(", false, 1).unwrap(),
            vec!["control"]
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nx",
        )
        .unwrap()
        .unwrap();
        assert!(h.chunked && h.event_stream && h.status == 200);
        assert_eq!(h.len, 80);
    }

    #[test]
    fn channel_paths() {
        assert_eq!(channel_path("/sse", "bench"), "/sse/bench");
        assert_eq!(
            channel_path("/sse/", "hourly:Final 1A"),
            "/sse/hourly/Final%201A"
        );
    }
}
