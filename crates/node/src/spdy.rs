//! SPDY/3.1 framing, as Kubernetes' streaming protocols use it
//! (`portforward.k8s.io` here; the frames are those of the SPDY/3 draft,
//! version field 3).
//!
//! A connection carries frames of two kinds. Control frames start with the
//! control bit, the version (3) and a type: `SYN_STREAM` opens a stream,
//! `SYN_REPLY` accepts it, `RST_STREAM` aborts it, `SETTINGS`, `PING`,
//! `GOAWAY`, `HEADERS` and `WINDOW_UPDATE` do what their names say. Data
//! frames carry a stream's bytes; the `FIN` flag on either kind half-closes
//! the stream from the sender's side.
//!
//! Name/value header blocks (in `SYN_STREAM`, `SYN_REPLY`, `HEADERS`) are
//! zlib-compressed with the dictionary the SPDY/3 draft defines, and each
//! direction of a connection is one zlib stream: a [`Decoder`] keeps the
//! inflate context of everything the peer sent, an [`Encoder`] the deflate
//! context of everything we sent (each block ends with a sync flush). Both
//! must live exactly as long as the connection.
//!
//! Flow control (`WINDOW_UPDATE`) is parsed but left to the caller; the
//! Kubernetes clients (`moby/spdystream`) neither send nor honour it.

use std::sync::LazyLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// Last frame the sender sends on this stream.
pub const FLAG_FIN: u8 = 0x01;
/// `SYN_STREAM`: the receiver must not send on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The largest length a frame header can express (24 bits).
pub const MAX_FRAME_LENGTH: usize = (1 << 24) - 1;
/// Decompressed header blocks larger than this are refused (a zlib bomb
/// would otherwise cost memory before anything checks it).
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Control frame types.
pub mod frame_type {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// `RST_STREAM` status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// `GOAWAY` status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// What reading or writing frames can fail with. Every error but
/// [`Error::Io`] is a protocol error of the peer (or of a frame we were
/// asked to write); after a header block fails to decompress the
/// connection's compression context is lost, so the connection must end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed {frame} frame: {reason}")]
    Malformed { frame: &'static str, reason: String },
    #[error("header block: {0}")]
    HeaderBlock(String),
    #[error("header compression: {0}")]
    Compression(String),
    #[error("a frame of {0} bytes does not fit SPDY's 24-bit length")]
    TooLarge(usize),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A header block: names (lowercase, as SPDY requires) with their values,
/// in order. A name given several values is sent once with the values
/// joined by NUL, as SPDY encodes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds a value (the name is lowercased).
    pub fn insert(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }

    /// [`Headers::insert`] as a builder.
    pub fn with(mut self, name: &str, value: &str) -> Headers {
        self.insert(name, value);
        self
    }

    /// The first value of `name` (compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The uncompressed block: a 32-bit count of names, then per name a
    /// 32-bit length and the name, a 32-bit length and the value(s).
    fn encode(&self) -> Result<Vec<u8>> {
        let mut names: Vec<(&str, Vec<&str>)> = Vec::new();
        for (name, value) in &self.0 {
            match names.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => values.push(value),
                None => names.push((name, vec![value])),
            }
        }
        let mut out = Vec::new();
        put_len(&mut out, names.len())?;
        for (name, values) in names {
            put_len(&mut out, name.len())?;
            out.extend_from_slice(name.as_bytes());
            let value = values.join("\0");
            put_len(&mut out, value.len())?;
            out.extend_from_slice(value.as_bytes());
        }
        Ok(out)
    }

    fn decode(block: &[u8]) -> Result<Headers> {
        let mut cursor = Cursor::new(block, "header block");
        let count = cursor.u32().map_err(block_error)?;
        let mut headers = Headers::new();
        for _ in 0..count {
            let len = cursor.u32().map_err(block_error)? as usize;
            let name = cursor.bytes(len).map_err(block_error)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| Error::HeaderBlock("a header name is not UTF-8".into()))?;
            if name.is_empty() {
                return Err(Error::HeaderBlock("an empty header name".into()));
            }
            let len = cursor.u32().map_err(block_error)? as usize;
            let value = cursor.bytes(len).map_err(block_error)?;
            let value = String::from_utf8_lossy(value);
            for v in value.split('\0') {
                headers.insert(name, v);
            }
        }
        if !cursor.rest().is_empty() {
            return Err(Error::HeaderBlock(format!(
                "{} bytes after the last header",
                cursor.rest().len()
            )));
        }
        Ok(headers)
    }
}

fn block_error(e: Error) -> Error {
    match e {
        Error::Malformed { reason, .. } => Error::HeaderBlock(reason),
        other => other,
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    let len = u32::try_from(len).map_err(|_| Error::TooLarge(len))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// One `SETTINGS` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24 bits: 4 is `MAX_CONCURRENT_STREAMS`, 7 `INITIAL_WINDOW_SIZE`, ….
    pub id: u32,
    pub value: u32,
}

/// A frame, decoded. Stream ids are 31-bit; odd ids are opened by the
/// client, even ones by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this module does not know (such as
    /// SPDY/3's `CREDENTIAL`): receivers ignore it, as the draft asks.
    Unknown {
        frame_type: u16,
        flags: u8,
    },
}

impl Frame {
    /// A data frame.
    pub fn data(stream_id: u32, data: Bytes) -> Frame {
        Frame::Data {
            stream_id,
            flags: 0,
            data,
        }
    }

    /// An empty data frame with `FIN`: the sender is done with the stream.
    pub fn fin(stream_id: u32) -> Frame {
        Frame::Data {
            stream_id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        }
    }
}

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1):
/// length-prefixed words, then a run of unprefixed text.
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &[&str] = &[
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information",
        "204 No Content",
        "301 Moved Permanently",
        "400 Bad Request",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "500 Internal Server Error",
        "501 Not Implemented",
        "503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
        " 00:00:00",
        " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
        "text/plain,text/javascript,public",
        "privatemax-age=gzip,deflate,sdch",
        "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    ];
    let mut out = Vec::new();
    for word in WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    for part in TAIL {
        out.extend_from_slice(part.as_bytes());
    }
    out
});

/// Bounds-checked big-endian reads over one frame's payload.
struct Cursor<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], frame: &'static str) -> Cursor<'a> {
        Cursor { buf, frame }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Malformed {
                frame: self.frame,
                reason: format!("{} bytes left where {n} are needed", self.buf.len()),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// The reading side of a connection: frame parsing and the inflate context
/// of the peer's header blocks.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("compressed_in", &self.inflate.total_in())
            .finish()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            inflate: Decompress::new(true),
        }
    }

    /// Reads the next frame; `Ok(None)` when the connection ends cleanly
    /// between two frames.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Option<Frame>> {
        let mut head = [0u8; 8];
        let mut got = 0;
        while got < head.len() {
            let n = r.read(&mut head[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            got += n;
        }
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        self.decode(head, body).map(Some)
    }

    /// Decodes one frame from its 8-byte header and its payload.
    pub fn decode(&mut self, head: [u8; 8], body: Vec<u8>) -> Result<Frame> {
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        if word & 0x8000_0000 == 0 {
            let stream_id = word & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(Error::Malformed {
                    frame: "DATA",
                    reason: "stream id 0".into(),
                });
            }
            return Ok(Frame::Data {
                stream_id,
                flags,
                data: Bytes::from(body),
            });
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        let kind = (word & 0xffff) as u16;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let malformed = |frame: &'static str, reason: &str| Error::Malformed {
            frame,
            reason: reason.to_string(),
        };
        let exact = |frame: &'static str, want: usize| {
            if body.len() == want {
                Ok(())
            } else {
                Err(Error::Malformed {
                    frame,
                    reason: format!("length {} instead of {want}", body.len()),
                })
            }
        };
        let nonzero = |frame: &'static str, id: u32| {
            if id == 0 {
                Err(malformed(frame, "stream id 0"))
            } else {
                Ok(id)
            }
        };
        match kind {
            frame_type::SYN_STREAM => {
                let mut c = Cursor::new(&body, "SYN_STREAM");
                let stream_id = nonzero("SYN_STREAM", c.u32()? & 0x7fff_ffff)?;
                let associated_to = c.u32()? & 0x7fff_ffff;
                let priority = c.u8()? >> 5;
                let slot = c.u8()?;
                let headers = self.headers(c.rest())?;
                Ok(Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers,
                })
            }
            frame_type::SYN_REPLY | frame_type::HEADERS => {
                let name = if kind == frame_type::SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                let mut c = Cursor::new(&body, name);
                let stream_id = nonzero(name, c.u32()? & 0x7fff_ffff)?;
                let headers = self.headers(c.rest())?;
                Ok(if kind == frame_type::SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                })
            }
            frame_type::RST_STREAM => {
                exact("RST_STREAM", 8)?;
                let mut c = Cursor::new(&body, "RST_STREAM");
                let stream_id = nonzero("RST_STREAM", c.u32()? & 0x7fff_ffff)?;
                let status = c.u32()?;
                if status == 0 {
                    return Err(malformed("RST_STREAM", "status 0"));
                }
                Ok(Frame::RstStream { stream_id, status })
            }
            frame_type::SETTINGS => {
                let mut c = Cursor::new(&body, "SETTINGS");
                let count = c.u32()? as usize;
                if c.rest().len() != count.saturating_mul(8) {
                    return Err(malformed(
                        "SETTINGS",
                        &format!("{count} entries in {} bytes", c.rest().len()),
                    ));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let word = c.u32()?;
                    entries.push(Setting {
                        flags: (word >> 24) as u8,
                        id: word & 0x00ff_ffff,
                        value: c.u32()?,
                    });
                }
                Ok(Frame::Settings { flags, entries })
            }
            frame_type::PING => {
                exact("PING", 4)?;
                let id = Cursor::new(&body, "PING").u32()?;
                Ok(Frame::Ping { id })
            }
            frame_type::GOAWAY => {
                exact("GOAWAY", 8)?;
                let mut c = Cursor::new(&body, "GOAWAY");
                Ok(Frame::GoAway {
                    last_good_stream_id: c.u32()? & 0x7fff_ffff,
                    status: c.u32()?,
                })
            }
            frame_type::WINDOW_UPDATE => {
                exact("WINDOW_UPDATE", 8)?;
                let mut c = Cursor::new(&body, "WINDOW_UPDATE");
                Ok(Frame::WindowUpdate {
                    stream_id: c.u32()? & 0x7fff_ffff,
                    delta: c.u32()? & 0x7fff_ffff,
                })
            }
            other => Ok(Frame::Unknown {
                frame_type: other,
                flags,
            }),
        }
    }

    /// Inflates one header block in the connection's zlib stream (the first
    /// block asks for the SPDY dictionary) and parses it.
    fn headers(&mut self, compressed: &[u8]) -> Result<Headers> {
        let mut out: Vec<u8> = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(Error::HeaderBlock(format!(
                        "more than {MAX_HEADER_BLOCK} bytes once decompressed"
                    )));
                }
                out.reserve(out.capacity().max(256));
            }
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            let result = self.inflate.decompress_vec(
                &compressed[consumed..],
                &mut out,
                FlushDecompress::Sync,
            );
            consumed += (self.inflate.total_in() - before_in) as usize;
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| Error::Compression(format!("setting the dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(Error::Compression(e.to_string())),
            }
            let progressed = self.inflate.total_in() > before_in || out.len() > before_out;
            if consumed == compressed.len() && out.len() < out.capacity() {
                break;
            }
            if !progressed {
                return Err(Error::Compression("truncated header block".into()));
            }
        }
        Headers::decode(&out)
    }
}

/// The writing side of a connection: frame encoding and the deflate
/// context of our header blocks.
pub struct Encoder {
    deflate: Compress,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("compressed_out", &self.deflate.total_out())
            .finish()
    }
}

impl Encoder {
    pub fn new() -> Result<Encoder> {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .map_err(|e| Error::Compression(format!("setting the dictionary: {e}")))?;
        Ok(Encoder { deflate })
    }

    /// The frame's bytes, ready for the wire.
    pub fn encode(&mut self, frame: &Frame) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                stream_id_ok("DATA", *stream_id)?;
                if data.len() > MAX_FRAME_LENGTH {
                    return Err(Error::TooLarge(data.len()));
                }
                out.reserve(8 + data.len());
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(
                    &((u32::from(*flags) << 24) | data.len() as u32).to_be_bytes(),
                );
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                stream_id_ok("SYN_STREAM", *stream_id)?;
                let block = self.compress(headers)?;
                control(&mut out, frame_type::SYN_STREAM, *flags, 10 + block.len())?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&(associated_to & 0x7fff_ffff).to_be_bytes());
                out.push((priority & 0x07) << 5);
                out.push(*slot);
                out.extend_from_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    frame_type::SYN_REPLY
                } else {
                    frame_type::HEADERS
                };
                stream_id_ok("SYN_REPLY/HEADERS", *stream_id)?;
                let block = self.compress(headers)?;
                control(&mut out, kind, *flags, 4 + block.len())?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                stream_id_ok("RST_STREAM", *stream_id)?;
                control(&mut out, frame_type::RST_STREAM, 0, 8)?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::Settings { flags, entries } => {
                control(
                    &mut out,
                    frame_type::SETTINGS,
                    *flags,
                    4 + 8 * entries.len(),
                )?;
                put_len(&mut out, entries.len())?;
                for e in entries {
                    let word = (u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff);
                    out.extend_from_slice(&word.to_be_bytes());
                    out.extend_from_slice(&e.value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                control(&mut out, frame_type::PING, 0, 4)?;
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control(&mut out, frame_type::GOAWAY, 0, 8)?;
                out.extend_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(&mut out, frame_type::WINDOW_UPDATE, 0, 8)?;
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
            }
            Frame::Unknown { frame_type, .. } => {
                return Err(Error::Malformed {
                    frame: "unknown",
                    reason: format!("cannot encode a frame of type {frame_type}"),
                });
            }
        }
        Ok(out)
    }

    /// Deflates one header block in the connection's zlib stream, ending
    /// with a sync flush so the peer can decode it on its own.
    fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>> {
        let block = headers.encode()?;
        let mut out: Vec<u8> = Vec::with_capacity(block.len() + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Compression(e.to_string()))?;
            consumed += (self.deflate.total_in() - before) as usize;
            // A sync flush is complete once deflate returns with output
            // space to spare.
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn stream_id_ok(frame: &'static str, id: u32) -> Result<()> {
    if id == 0 || id & 0x8000_0000 != 0 {
        return Err(Error::Malformed {
            frame,
            reason: format!("stream id {id} is not a non-zero 31-bit number"),
        });
    }
    Ok(())
}

fn control(out: &mut Vec<u8>, kind: u16, flags: u8, len: usize) -> Result<()> {
    if len > MAX_FRAME_LENGTH {
        return Err(Error::TooLarge(len));
    }
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | len as u32).to_be_bytes());
    Ok(())
}

/// Reads frames from one direction of a SPDY connection into `frames`
/// until the connection ends; a decoding error is passed on and ends it.
pub async fn read_frames<R: AsyncRead + Unpin>(
    mut r: R,
    frames: tokio::sync::mpsc::Sender<Result<Frame>>,
) {
    let mut decoder = Decoder::new();
    loop {
        let next = decoder.read(&mut r).await;
        let end = !matches!(next, Ok(Some(_)));
        let item = match next {
            Ok(Some(f)) => Ok(f),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if frames.send(item).await.is_err() || end {
            return;
        }
    }
}

/// Writes the frames it receives to the other direction of a SPDY
/// connection (flushing when none wait), then shuts that direction down.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    mut encoder: Encoder,
    mut frames: tokio::sync::mpsc::Receiver<Frame>,
) {
    while let Some(frame) = frames.recv().await {
        let bytes = match encoder.encode(&frame) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "spdy: encoding a frame");
                break;
            }
        };
        if w.write_all(&bytes).await.is_err() {
            break;
        }
        if frames.is_empty() && w.flush().await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes frames with one encoder and reads them back with one decoder,
    /// as the two ends of a connection would.
    async fn round_trip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = Encoder::new().unwrap();
        let mut wire = Vec::new();
        for f in frames {
            wire.extend(enc.encode(f).unwrap());
        }
        let mut dec = Decoder::new();
        let mut r = wire.as_slice();
        let mut out = Vec::new();
        while let Some(f) = dec.read(&mut r).await.unwrap() {
            out.push(f);
        }
        out
    }

    fn pf_headers(kind: &str, request: &str) -> Headers {
        Headers::new()
            .with("streamType", kind)
            .with("port", "8080")
            .with("requestID", request)
    }

    #[tokio::test]
    async fn every_frame_type_survives_a_round_trip() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                slot: 0,
                flags: FLAG_FIN,
                headers: pf_headers("error", "0"),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new(),
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: Headers::new().with("a", "1").with("a", "2"),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: 7,
                        value: 65536,
                    },
                    Setting {
                        flags: 2,
                        id: 4,
                        value: 100,
                    },
                ],
            },
            Frame::Ping { id: 31337 },
            Frame::GoAway {
                last_good_stream_id: 7,
                status: goaway::PROTOCOL_ERROR,
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 1 << 20,
            },
            Frame::data(3, Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")),
            Frame::fin(3),
        ];
        assert_eq!(round_trip(&frames).await, frames);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The first frames kubectl v1.32 sent for `kubectl port-forward
    /// pod/web 18000:8080` and one local connection (captured from the
    /// agent): the error and data streams of request 0, whose header
    /// blocks share one zlib stream that begins with the SPDY dictionary's
    /// id (`e3c6a7c2`), then the reset of the data stream once done.
    #[tokio::test]
    async fn frames_captured_from_kubectl_decode_in_order() {
        let wire = [
            "800300010000003e0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9\
             a0808614cb45e01c60616061c0c0c0c0590489c64c50f2663400000000ffff",
            "800300010000001800000003000000000000c2aa19540e2512d60b000000ffff",
            "80030003000000080000000300000005",
        ]
        .concat();
        let wire = hex(&wire);
        let mut dec = Decoder::new();
        let mut r = wire.as_slice();
        let stream = |id, kind: &str| Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: pf_headers(kind, "0"),
        };
        assert_eq!(dec.read(&mut r).await.unwrap(), Some(stream(1, "error")));
        assert_eq!(dec.read(&mut r).await.unwrap(), Some(stream(3, "data")));
        assert_eq!(
            dec.read(&mut r).await.unwrap(),
            Some(Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL
            })
        );
        assert_eq!(dec.read(&mut r).await.unwrap(), None);
        // Out of order (the second block without the first) it is garbage.
        let second = hex("800300010000001800000003000000000000c2aa19540e2512d60b000000ffff");
        assert!(Decoder::new().read(&mut second.as_slice()).await.is_err());
    }

    #[tokio::test]
    async fn header_blocks_share_one_compression_context_per_direction() {
        // The second block compresses against the first: decoding it alone
        // (a fresh decoder) must fail, decoding in order must not.
        let frames: Vec<Frame> = (0..4)
            .map(|i| Frame::SynStream {
                stream_id: 2 * i + 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: pf_headers(if i % 2 == 0 { "error" } else { "data" }, "7"),
            })
            .collect();
        assert_eq!(round_trip(&frames).await, frames);

        let mut enc = Encoder::new().unwrap();
        let first = enc.encode(&frames[0]).unwrap();
        let second = enc.encode(&frames[1]).unwrap();
        assert!(second.len() < first.len(), "{second:?} vs {first:?}");
        let mut fresh = Decoder::new();
        assert!(fresh.read(&mut second.as_slice()).await.is_err());
    }

    #[test]
    fn several_values_of_a_name_travel_nul_separated() {
        let h = Headers::new()
            .with("X-A", "1")
            .with("x-a", "2")
            .with("b", "");
        let block = h.encode().unwrap();
        let mut want = Vec::new();
        want.extend(2u32.to_be_bytes());
        want.extend(3u32.to_be_bytes());
        want.extend(b"x-a");
        want.extend(3u32.to_be_bytes());
        want.extend(b"1\x002");
        want.extend(1u32.to_be_bytes());
        want.extend(b"b");
        want.extend(0u32.to_be_bytes());
        assert_eq!(block, want);
        let back = Headers::decode(&block).unwrap();
        assert_eq!(back, h.clone());
        assert_eq!(back.get("X-A"), Some("1"));
    }

    #[test]
    fn the_dictionary_is_the_one_of_the_spdy_3_draft() {
        // 1423 bytes, starting with the length-prefixed "options" and ending
        // with "enq=0." (the draft's last line).
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b",*,enq=0."));
        // Its Adler-32, the dictionary id in every SPDY/3 zlib header.
        let id = Compress::new(Compression::best(), true)
            .set_dictionary(&DICTIONARY)
            .unwrap();
        assert_eq!(id, 0xe3c6_a7c2);
    }

    #[test]
    fn control_frames_have_the_layout_of_the_draft() {
        let mut enc = Encoder::new().unwrap();
        // PING: control bit + version 3, type 6, flags 0, length 4, id.
        assert_eq!(
            enc.encode(&Frame::Ping { id: 1 }).unwrap(),
            [0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1]
        );
        // RST_STREAM of stream 3 with CANCEL (5).
        assert_eq!(
            enc.encode(&Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL
            })
            .unwrap(),
            [0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 5]
        );
        // DATA of stream 1 with FIN and two bytes.
        assert_eq!(
            enc.encode(&Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hi")
            })
            .unwrap(),
            [0, 0, 0, 1, 0x01, 0, 0, 2, b'h', b'i']
        );
        // A SYN_REPLY's zlib stream starts with a header naming a preset
        // dictionary (FDICT).
        let reply = enc
            .encode(&Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new(),
            })
            .unwrap();
        assert_eq!(&reply[..4], [0x80, 0x03, 0x00, 0x02]);
        let (cmf, flg) = (reply[12], reply[13]);
        assert_eq!(cmf & 0x0f, 8, "deflate");
        assert_ne!(flg & 0x20, 0, "FDICT");
        assert_eq!((u16::from(cmf) << 8 | u16::from(flg)) % 31, 0);
    }

    #[tokio::test]
    async fn malformed_frames_are_errors_not_panics() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "version 2",
                vec![0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1],
            ),
            (
                "ping of 3 bytes",
                vec![0x80, 0x03, 0x00, 0x06, 0, 0, 0, 3, 0, 0, 1],
            ),
            ("data on stream 0", vec![0, 0, 0, 0, 0, 0, 0, 1, b'x']),
            ("truncated header", vec![0x80, 0x03, 0x00]),
            (
                "truncated body",
                vec![0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0],
            ),
            (
                "syn_stream whose block is not zlib",
                vec![
                    0x80, 0x03, 0x00, 0x01, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
                ],
            ),
            (
                "rst_stream with status 0",
                vec![0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0],
            ),
            (
                "settings whose count disagrees with its length",
                vec![0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0, 0, 0, 9],
            ),
        ];
        for (name, bytes) in cases {
            let mut dec = Decoder::new();
            let got = dec.read(&mut bytes.as_slice()).await;
            assert!(got.is_err(), "{name}: {got:?}");
        }
    }

    #[tokio::test]
    async fn unknown_control_frames_are_skipped_with_their_payload() {
        let mut wire = vec![0x80, 0x03, 0x00, 0x0a, 0, 0, 0, 2, 0xaa, 0xbb];
        wire.extend(
            Encoder::new()
                .unwrap()
                .encode(&Frame::Ping { id: 9 })
                .unwrap(),
        );
        let mut dec = Decoder::new();
        let mut r = wire.as_slice();
        assert_eq!(
            dec.read(&mut r).await.unwrap(),
            Some(Frame::Unknown {
                frame_type: 10,
                flags: 0
            })
        );
        assert_eq!(dec.read(&mut r).await.unwrap(), Some(Frame::Ping { id: 9 }));
        assert_eq!(dec.read(&mut r).await.unwrap(), None);
    }
}
