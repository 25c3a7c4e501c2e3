//! RFC 6455 framing: parsing client frames out of a read buffer and writing server frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Binary data.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl OpCode {
    fn from_bits(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One parsed client frame (payload already unmasked).
#[derive(Debug)]
pub struct Frame {
    /// Final fragment of its message.
    pub fin: bool,
    /// Per-message compression bit (first fragment only).
    pub rsv1: bool,
    /// Opcode.
    pub opcode: OpCode,
    /// Payload.
    pub payload: Bytes,
}

/// A client broke the framing rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV2/RSV3 set, or RSV1 without a negotiated extension.
    #[error("reserved bits set")]
    ReservedBits,
    /// Opcode 3–7 or B–F.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// Client frames must be masked.
    #[error("client frame is not masked")]
    Unmasked,
    /// Control frames are at most 125 bytes and never fragmented.
    #[error("invalid control frame")]
    BadControl,
    /// The frame is larger than allowed.
    #[error("frame of {0} bytes exceeds the limit")]
    TooBig(u64),
}

/// Parses one frame from the front of `buf`; `Ok(None)` if more bytes are needed.
pub fn parse(
    buf: &mut BytesMut,
    max_payload: usize,
    rsv1_allowed: bool,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !rsv1_allowed) {
        return Err(FrameError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, header) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (len > 125 || !fin || rsv1) {
        return Err(FrameError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig(len));
    }
    let total = header + 4 + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[header..header + 4]);
    buf.advance(header + 4);
    let mut payload = buf.split_to(len as usize);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some(Frame {
        fin,
        rsv1,
        opcode,
        payload: payload.freeze(),
    }))
}

/// Appends a server frame (unmasked, final) to `out`.
pub fn write(out: &mut BytesMut, opcode: OpCode, rsv1: bool, payload: &[u8]) {
    let b0 = 0x80 | if rsv1 { 0x40 } else { 0 } | opcode.bits();
    out.reserve(payload.len() + 10);
    out.put_u8(b0);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, payload: &[u8]) -> BytesMut {
        let mask = [1, 2, 3, 4];
        let mut out = BytesMut::new();
        out.put_u8(b0);
        if payload.len() < 126 {
            out.put_u8(0x80 | payload.len() as u8);
        } else {
            out.put_u8(0x80 | 126);
            out.put_u16(payload.len() as u16);
        }
        out.put_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn parses_masked_frames_incrementally() {
        let text = "x".repeat(300);
        let whole = masked(0x81, text.as_bytes());
        let mut buf = BytesMut::from(&whole[..5]);
        assert!(parse(&mut buf, 1000, false).unwrap().is_none());
        buf.extend_from_slice(&whole[5..]);
        let f = parse(&mut buf, 1000, false).unwrap().unwrap();
        assert_eq!(
            (f.fin, f.opcode, &f.payload[..]),
            (true, OpCode::Text, text.as_bytes())
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut unmasked = BytesMut::from(&[0x81u8, 0x01, b'a'][..]);
        assert_eq!(
            parse(&mut unmasked, 10, false).unwrap_err(),
            FrameError::Unmasked
        );
        assert_eq!(
            parse(&mut masked(0xC1, b"a"), 10, false).unwrap_err(),
            FrameError::ReservedBits
        );
        assert_eq!(
            parse(&mut masked(0x83, b"a"), 10, false).unwrap_err(),
            FrameError::UnknownOpcode(3)
        );
        assert_eq!(
            parse(&mut masked(0x09, b"a"), 10, false).unwrap_err(),
            FrameError::BadControl
        );
        assert_eq!(
            parse(&mut masked(0x81, &[0; 200]), 100, false).unwrap_err(),
            FrameError::TooBig(200)
        );
        assert!(
            parse(&mut masked(0xC1, b"a"), 10, true)
                .unwrap()
                .unwrap()
                .rsv1
        );
    }

    #[test]
    fn writes_length_forms() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let mut out = BytesMut::new();
            write(&mut out, OpCode::Text, false, &vec![b'a'; n]);
            let header = match n {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(out.len(), header + n);
            assert_eq!(out[0], 0x81);
        }
    }
}
