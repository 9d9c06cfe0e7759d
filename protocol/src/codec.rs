//! The only place that knows the body codec (bincode 1.3.3, fixed-width
//! integers, a hard limit, no trailing bytes), so that it can be swapped.

use crate::{Request, HEADER_LEN, MAGIC, MAX_BODY, VERSION};
use bincode::Options;
use std::fmt;
use std::io::Read;

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Io(std::io::ErrorKind),
    BadMagic,
    Version(u16),
    TooLong(u64),
    Truncated,
    TrailingBytes,
    Body(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Io(k) => write!(f, "read error: {k}"),
            DecodeError::BadMagic => write!(f, "not a husk request"),
            DecodeError::Version(v) => {
                write!(f, "protocol version {v} is not supported (want {VERSION})")
            }
            DecodeError::TooLong(n) => write!(f, "request of {n} bytes exceeds {MAX_BODY}"),
            DecodeError::Truncated => write!(f, "request is truncated"),
            DecodeError::TrailingBytes => write!(f, "request has trailing bytes"),
            DecodeError::Body(e) => write!(f, "malformed request: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_BODY as u64)
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

pub(crate) fn encode(req: &Request) -> Result<Vec<u8>, DecodeError> {
    let body = options().serialize(req).map_err(|e| DecodeError::Body(e.to_string()))?;
    if body.len() > MAX_BODY {
        return Err(DecodeError::TooLong(body.len() as u64));
    }
    let len = u32::try_from(body.len()).map_err(|_| DecodeError::TooLong(body.len() as u64))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a body (without header). Never panics; allocations are bounded by
/// the codec limit.
pub fn decode_body(body: &[u8]) -> Result<Request, DecodeError> {
    if body.len() > MAX_BODY {
        return Err(DecodeError::TooLong(body.len() as u64));
    }
    options().deserialize(body).map_err(|e| match *e {
        bincode::ErrorKind::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated
        }
        _ => DecodeError::Body(e.to_string()),
    })
}

/// Read exactly `buf.len()` bytes, tolerating short reads and EINTR.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), DecodeError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Err(DecodeError::Truncated),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DecodeError::Io(e.kind())),
        }
    }
    Ok(())
}

/// Read one frame from `r` and require end of input after it.
pub fn read_frame(mut r: impl Read) -> Result<Request, DecodeError> {
    let mut header = [0u8; HEADER_LEN];
    read_full(&mut r, &mut header)?;
    if header[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
    if len as usize > MAX_BODY {
        return Err(DecodeError::TooLong(u64::from(len)));
    }
    let mut body = vec![0u8; len as usize];
    read_full(&mut r, &mut body)?;
    let mut extra = [0u8; 1];
    loop {
        match r.read(&mut extra) {
            Ok(0) => break,
            Ok(_) => return Err(DecodeError::TrailingBytes),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DecodeError::Io(e.kind())),
        }
    }
    decode_body(&body)
}
