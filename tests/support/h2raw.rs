//! A raw HTTP/2 client: frames written byte by byte, for abuse no well-behaved client sends
//! (rapid resets, more streams than allowed, CONTINUATION floods, HPACK bombs).
//!
//! Header blocks are encoded with HPACK literals (no Huffman); responses are not decoded beyond
//! the frame layer, except the static-table `:status` of [`Frame::static_status`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Frame types (RFC 9113 6).
pub const DATA: u8 = 0x0;
/// HEADERS.
pub const HEADERS: u8 = 0x1;
/// RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// SETTINGS.
pub const SETTINGS: u8 = 0x4;
/// PING.
pub const PING: u8 = 0x6;
/// GOAWAY.
pub const GOAWAY: u8 = 0x7;
/// WINDOW_UPDATE.
pub const WINDOW_UPDATE: u8 = 0x8;
/// CONTINUATION.
pub const CONTINUATION: u8 = 0x9;

/// END_STREAM flag (DATA, HEADERS).
pub const END_STREAM: u8 = 0x1;
/// ACK flag (SETTINGS, PING).
pub const ACK: u8 = 0x1;
/// END_HEADERS flag (HEADERS, CONTINUATION).
pub const END_HEADERS: u8 = 0x4;

/// Error codes (RFC 9113 7).
pub const PROTOCOL_ERROR: u32 = 0x1;
/// REFUSED_STREAM.
pub const REFUSED_STREAM: u32 = 0x7;
/// CANCEL.
pub const CANCEL: u32 = 0x8;
/// ENHANCE_YOUR_CALM.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame as bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < (1 << 24), "frame payload too large");
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// RST_STREAM with `code`.
pub fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// WINDOW_UPDATE with `increment` (0 is a protocol error on purpose).
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix, the first byte's other bits set to `flags`.
pub fn hpack_int(n: u8, flags: u8, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(7, 0x00, s.len(), out);
    out.extend_from_slice(s);
}

/// A literal header field without indexing, new name.
pub fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_str(name.as_bytes(), &mut out);
    hpack_str(value, &mut out);
    out
}

/// A literal header field with incremental indexing, new name (it enters the dynamic table).
pub fn literal_indexed(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    hpack_str(name.as_bytes(), &mut out);
    hpack_str(value, &mut out);
    out
}

/// An indexed header field (static 1..=61, dynamic from 62).
pub fn indexed(index: usize) -> Vec<u8> {
    let mut out = Vec::new();
    hpack_int(7, 0x80, index, &mut out);
    out
}

/// The header block of a request: `:method`, `:scheme http`, `:path`, `:authority`, then
/// `extra` headers (lower-case names).
pub fn request_block(method: &str, path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = literal(":method", method.as_bytes());
    b.extend(literal(":scheme", b"http"));
    b.extend(literal(":path", path.as_bytes()));
    b.extend(literal(":authority", authority.as_bytes()));
    for (k, v) in extra {
        b.extend(literal(k, v.as_bytes()));
    }
    b
}

/// A complete GET on `stream`: one HEADERS frame with END_HEADERS and END_STREAM.
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &request_block("GET", path, "localhost", &[]),
    )
}

/// A frame read from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        self.payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The `:status` of a response HEADERS frame when the server encoded it as an indexed
    /// static-table entry (200, 204, 206, 304, 400, 404, 500); `None` otherwise.
    pub fn static_status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let mut p = &self.payload[..];
        if self.flags & 0x8 != 0 {
            // PADDED
            let pad = *p.first()? as usize;
            p = p.get(1..p.len().checked_sub(pad)?)?;
        }
        if self.flags & 0x20 != 0 {
            // PRIORITY
            p = p.get(5..)?;
        }
        // Skip dynamic table size updates.
        while let Some(b) = p.first() {
            if b & 0xe0 == 0x20 {
                p = &p[1..];
            } else {
                break;
            }
        }
        match p.first()? {
            0x88 => Some(200),
            0x89 => Some(204),
            0x8a => Some(206),
            0x8b => Some(304),
            0x8c => Some(400),
            0x8d => Some(404),
            0x8e => Some(500),
            _ => None,
        }
    }
}

/// What [`Conn::next`] saw.
#[derive(Debug)]
pub enum Next {
    /// A frame.
    Frame(Frame),
    /// The server closed (or reset) the connection.
    Closed,
    /// Nothing within the wait.
    Idle,
}

/// A raw HTTP/2 connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Every frame read so far.
    pub frames: Vec<Frame>,
    closed: bool,
}

impl Conn {
    /// Connects, sends the preface, a SETTINGS frame with a large initial window, a large
    /// connection window, and acknowledges the server's SETTINGS.
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let mut c = Conn {
            stream,
            buf: Vec::new(),
            frames: Vec::new(),
            closed: false,
        };
        let mut hello = PREFACE.to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 2^30.
        let mut settings = Vec::new();
        settings.extend_from_slice(&0x4u16.to_be_bytes());
        settings.extend_from_slice(&(1u32 << 30).to_be_bytes());
        hello.extend(frame(SETTINGS, 0, 0, &settings));
        hello.extend(window_update(0, (1 << 30) - 65_535));
        c.write(&hello).await.expect("write the preface");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match c.next(end.saturating_duration_since(Instant::now())).await {
                Next::Frame(f) if f.kind == SETTINGS && f.flags & ACK == 0 => break,
                Next::Frame(_) => {}
                other => panic!("no SETTINGS from the server: {other:?}"),
            }
        }
        c.write(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .expect("write SETTINGS ACK");
        c
    }

    /// Writes bytes (an error once the server has closed).
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads the next frame, waiting at most `wait`. PINGs are answered.
    pub async fn next(&mut self, wait: Duration) -> Next {
        let end = Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.kind == PING && f.flags & ACK == 0 {
                        let _ = self.write(&frame(PING, ACK, 0, &f.payload)).await;
                    }
                    self.frames.push(f.clone());
                    return Next::Frame(f);
                }
            }
            if self.closed {
                return Next::Closed;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Idle;
            }
            let mut chunk = [0u8; 64 * 1024];
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => return Next::Idle,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until `stop` says so, the connection closes, or `wait` passes. Returns
    /// whether `stop` matched.
    pub async fn read_until(
        &mut self,
        wait: Duration,
        mut stop: impl FnMut(&Frame) -> bool,
    ) -> bool {
        let end = Instant::now() + wait;
        loop {
            match self
                .next(end.saturating_duration_since(Instant::now()))
                .await
            {
                Next::Frame(f) => {
                    if stop(&f) {
                        return true;
                    }
                }
                Next::Closed | Next::Idle => return false,
            }
        }
    }

    /// Reads until a GOAWAY arrives or the connection closes, within `wait`. Returns the GOAWAY
    /// error code (when one came) and whether the connection ended (GOAWAY or close).
    pub async fn wait_for_goaway_or_close(&mut self, wait: Duration) -> (Option<u32>, bool) {
        let end = Instant::now() + wait;
        loop {
            match self
                .next(end.saturating_duration_since(Instant::now()))
                .await
            {
                Next::Frame(f) if f.kind == GOAWAY => return (f.error_code(), true),
                Next::Frame(_) => {}
                Next::Closed => return (None, true),
                Next::Idle => return (None, false),
            }
        }
    }

    /// Frames of `kind` read so far.
    pub fn count(&self, kind: u8) -> usize {
        self.frames.iter().filter(|f| f.kind == kind).count()
    }

    /// RST_STREAM frames with `code` read so far.
    pub fn resets_with(&self, code: u32) -> usize {
        self.frames
            .iter()
            .filter(|f| f.kind == RST_STREAM && f.error_code() == Some(code))
            .count()
    }
}
