//! The gateway <-> function wire protocol, version 1. This file is the authoritative byte-level
//! description; nothing else defines bytes on the wire.
//!
//! # Transport and roles
//!
//! A function cannot accept connections, so it **dials** the gateway's callback listener over
//! TCP (address from the invocation payload). After a three-frame handshake the roles flip: the
//! gateway sends *requests*, the function answers with *responses*, matched by a request id, so
//! many requests can be in flight on one connection and responses may come back in any order.
//! A connection lives for at most one invocation.
//!
//! # Frame
//!
//! Every message is one frame: a fixed 20-byte header, then `meta_len` bytes of **meta** (small
//! control fields in the fixed binary layouts below), then `body_len` bytes of **body** (raw chunk
//! bytes, never serialized, never copied by the codec). All integers are big-endian.
//!
//! ```text
//! offset size field
//!  0      2   magic       0x4D 0x46 ("MF")
//!  2      1   version     0x01
//!  3      1   opcode      see the table below; unknown opcodes are a decode error
//!  4      1   flags       bit 0 RESPONSE, bit 1 ERROR (ERROR requires RESPONSE); bits 2..7 zero
//!  5      1   reserved    0x00
//!  6      2   meta_len    u16
//!  8      8   request_id  u64; 0 on handshake frames and on the function's BYE notice
//! 16      4   body_len    u32
//! 20      -   meta (meta_len bytes), then body (body_len bytes)
//! ```
//!
//! **Limits are enforced from the header alone, before anything is allocated**: a receiver reads
//! the 20 header bytes, checks `meta_len <= max_meta` and `body_len <= max_body` ([`Limits`]) and
//! refuses the frame (error `FRAME_TOO_LARGE`, then closes) without reserving buffer space for it.
//! Defaults: [`Limits::DEFAULT`] (meta <= 65535, body <= 64 MiB); before authentication the
//! gateway uses [`Limits::HANDSHAKE`] (meta <= 1024, body = 0). The split follows mini-redis:
//! [`check`] answers "is a whole, valid frame in this buffer?" and [`Frame::parse`] then cuts it
//! out of the buffer without copying.
//!
//! # Common layouts (inside meta)
//!
//! ```text
//! ChunkId    = len u8 (1..=255) | len bytes                 opaque; see ChunkId::for_object
//! NodeState  = term u64 | hash [16]                          24 bytes; all-zero = empty state
//! StoreStats = used_bytes u64 | chunks u64 | capacity u64    24 bytes
//! Ack        = NodeState | StoreStats                        48 bytes, sent after every mutation
//! ```
//!
//! # Handshake (request_id = 0, flags = 0)
//!
//! ```text
//! 0x01 CHALLENGE gateway -> function, first frame on every connection
//!      meta = nonce [32]   (fresh random bytes per connection)
//! 0x02 HELLO     function -> gateway
//!      meta = node_id_len u8 (1..=128) | node_id utf8
//!           | instance_id [16]                       random per function process
//!           | token_len u8 | token bytes             the invocation token from the payload
//!           | command u8                             0 serve, 1 warmup, 2 reset, 0x80 sleep (test)
//!           | view u8                                0 match, 1 fresh, 2 lost, 3 diverged
//!           | state NodeState | stats StoreStats     what the function's memory holds now
//!           | invocation_id_len u8 (0..=128) | utf8  the Lambda request id
//!           | deadline_unix_ms u64                   when the function will stop serving
//!           | mac [32]
//!      mac = HMAC-SHA256(secret, "memfn-auth-v1\0" | nonce | meta[..meta_len-32])
//! 0x03 WELCOME   gateway -> function: authenticated, meta empty. Requests may follow.
//! ```
//!
//! The `secret` is the deployment's shared secret (the function reads it from `MEMFN_SECRET`).
//! A peer whose HELLO is missing, malformed, badly MACed or carries a token the gateway did not
//! issue gets an ERROR frame (opcode HELLO, code `UNAUTHENTICATED`) and the connection is closed;
//! the gateway serves and sends nothing else before WELCOME. The nonce defeats replay; the MAC
//! covers every HELLO field, so the reported state cannot be forged either.
//!
//! # Requests (gateway -> function, flags = 0, request_id >= 1, unique among in-flight requests)
//! and their responses (function -> gateway, same opcode and request_id, flags = RESPONSE)
//!
//! ```text
//! op   name          request meta | body                      response meta | body
//! 0x10 PUT_CHUNK     ChunkId | crc32c u32 | data               Ack
//! 0x11 GET_CHUNK     ChunkId | offset u64 | length u64         chunk_len u64 | offset u64
//!                    (length u64::MAX = to the end)              | crc32c u32 of body | bytes
//! 0x12 DELETE_CHUNK  ChunkId                                   existed u8 | Ack
//! 0x13 STAT_CHUNK    ChunkId                                   len u64 | crc32c u32
//! 0x14 LIST          after_len u8 | after | limit u32          count u32 | more u8 |
//!                    (ids > after, ascending; after_len 0 =      count x (ChunkId | len u64 |
//!                     from the start; limit clamped 1..=4096)      crc32c u32) in the body
//! 0x15 STATS         (empty)                                   Ack
//! 0x20 PING          (empty) | body <= 1 MiB (echoed)          (empty) | the same body
//! 0x21 BYE           (empty)                                   Ack; then the function closes
//! 0x7E FAULT_CORRUPT ChunkId  (only if MEMFN_FAULT_INJECTION)  (empty)
//! ```
//!
//! **Refused from the header.** The function decides on a request as soon as its header is in
//! and, if it refuses, discards the body as it arrives without buffering it: a PUT_CHUNK whose
//! body cannot fit in the free capacity gets `FULL` (detail0 = body length, detail1 = bytes
//! free), a PING body over 1 MiB and a body on any other request get `BAD_REQUEST`. The
//! connection carries on. (A put that would replace a chunk of the same id is judged without
//! counting the old chunk's space as free.)
//!
//! Every chunk carries a CRC32C (Castagnoli): the gateway sends it with PUT_CHUNK and the
//! function recomputes it before storing (`CORRUPT` on mismatch); the function re-checks the
//! stored chunk on every GET_CHUNK and answers `CORRUPT` rather than wrong bytes; the GET response
//! carries the CRC32C of exactly the bytes in its body so the gateway can check them too.
//!
//! The function also sends one unsolicited **BYE notice** (opcode 0x21, flags 0, request_id 0,
//! meta = Ack) when it is about to stop serving (idle tail or deadline). It keeps answering
//! requests already sent; the gateway stops issuing new ones, waits for its in-flight responses
//! and then closes its write side, which ends the connection.
//!
//! # Error frames (flags = RESPONSE | ERROR, opcode and request_id of the failed request)
//!
//! ```text
//! meta = code u16 | detail0 u64 | detail1 u64 | msg_len u16 (<= 1024) | msg utf8
//! code 1 NOT_FOUND        2 FULL (detail0 = bytes needed, detail1 = bytes free)
//!      3 CORRUPT          4 BAD_REQUEST        5 UNAUTHENTICATED
//!      6 FRAME_TOO_LARGE (detail0 = declared length, detail1 = limit)
//!      7 UNSUPPORTED      8 SHUTTING_DOWN      9 INTERNAL
//! ```
//!
//! Unknown error codes decode as [`ErrorCode::Other`] so old gateways survive new functions.
//! `FRAME_TOO_LARGE` and any header-level decode error end the connection (the stream cannot be
//! resynchronized): the receiver sends one **connection error** (opcode BYE, request_id 0,
//! flags RESPONSE | ERROR) and closes. The other codes answer one request and the connection
//! carries on.
//!
//! # Ending a connection
//!
//! BYE (either way) ends a session cleanly; a plain close (FIN) without BYE also ends it, and
//! the function returns from its invocation. A *failed* socket (reset, timeout) is different:
//! the function re-dials and authenticates again while its invocation lasts.
//!
//! # The node state
//!
//! A function's memory is summarized by a [`NodeState`]: `term` counts the mutations (puts and
//! deletes) applied since the process started or was reset, and `hash` chains them
//! ([`NodeState::advance`]). A fresh process has the empty state. The gateway keeps the newest
//! state the function reported and passes it as its *view* in the next invocation; the function
//! compares ([`ViewCheck`]) and an empty state under a non-empty view means the provider
//! replaced the instance and the memory is gone (`lost`); a different non-empty state means the
//! memory holds what the gateway does not know (`diverged`).
//!
//! The function reports its state in the HELLO of every connection, in every Ack (in the order
//! it applied the mutations, so the last one read is the newest), in the BYE notice, and in the
//! invocation's response (`state` in [`crate::invocation::InvocationResponse`]). A function
//! mutates its memory only while an invocation serves, so the response's state is the memory's
//! state until the next invocation, and it counts mutations whose Acks the gateway never read
//! (a connection closed or reset with requests in flight). The gateway's view is therefore:
//! the last Ack of the connection it holds; once that connection is over, the state recorded
//! when it dropped it, replaced by the invocation's response state when that invocation
//! returns. (A view taken from anything older — the HELLO of a connection that then stored
//! chunks — makes a function that lost nothing answer `diverged`.) A `diverged` memory is
//! treated as lost and emptied by a `reset` invocation before anything is restored onto it;
//! the verdict of a `reset` invocation is not a loss (the gateway asked for the emptying).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"MF";
/// Protocol version carried in every header.
pub const VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 20;
/// Default largest accepted body: one 64 MiB chunk.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;
/// Length of the handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Length of the HELLO MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Domain separator prefixed to the MAC input.
pub const AUTH_DOMAIN: &[u8] = b"memfn-auth-v1\0";
/// Longest node id.
pub const MAX_NODE_ID: usize = 128;
/// Longest Lambda invocation id carried in HELLO.
pub const MAX_INVOCATION_ID: usize = 128;
/// Longest error message.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Largest LIST page the function returns.
pub const MAX_LIST_LIMIT: u32 = 4096;
/// Largest PING body the function echoes.
pub const MAX_PING_BODY: usize = 1024 * 1024;
/// Header flag: this frame answers a request.
pub const FLAG_RESPONSE: u8 = 0x01;
/// Header flag: this response is an error (meta is an [`ErrorBody`]).
pub const FLAG_ERROR: u8 = 0x02;

/// Size limits a receiver enforces from the header, before allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted meta section.
    pub max_meta: usize,
    /// Largest accepted body.
    pub max_body: usize,
}

impl Limits {
    /// Limits on an authenticated connection.
    pub const DEFAULT: Limits = Limits {
        max_meta: u16::MAX as usize,
        max_body: DEFAULT_MAX_BODY,
    };
    /// Limits before authentication: a HELLO fits, a chunk does not.
    pub const HANDSHAKE: Limits = Limits {
        max_meta: 1024,
        max_body: 0,
    };

    /// Default meta limit with the given body limit.
    pub fn with_max_body(max_body: usize) -> Limits {
        Limits {
            max_body: max_body.min(u32::MAX as usize),
            ..Limits::DEFAULT
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Everything that can be wrong with bytes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes are not "MF".
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// A version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// An opcode this build does not know.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// Unknown flag bits, ERROR without RESPONSE, or a non-zero reserved byte.
    #[error("bad flags 0x{0:02x}")]
    BadFlags(u8),
    /// The header declares a section larger than the receiver accepts.
    #[error("frame {part} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// "meta" or "body".
        part: &'static str,
        /// Declared length.
        len: u64,
        /// Receiver's limit.
        max: u64,
    },
    /// The meta (or a structured body) does not match its layout.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A frame valid in itself but not allowed here (e.g. a response where a request belongs).
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
}

/// Frame kinds. The numeric values are the wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Gateway's first frame: the nonce.
    Challenge = 0x01,
    /// Function's authenticated introduction.
    Hello = 0x02,
    /// Gateway accepted the HELLO.
    Welcome = 0x03,
    /// Store a chunk.
    PutChunk = 0x10,
    /// Read a chunk or a byte range of it.
    GetChunk = 0x11,
    /// Remove a chunk.
    DeleteChunk = 0x12,
    /// Length and CRC of a chunk.
    StatChunk = 0x13,
    /// Page through the stored chunk ids.
    List = 0x14,
    /// State and store statistics.
    Stats = 0x15,
    /// Liveness and round-trip probe; echoes its body.
    Ping = 0x20,
    /// End of the session (request from the gateway, or the function's notice).
    Bye = 0x21,
    /// Fault injection: flip a byte of a stored chunk (refused unless enabled).
    FaultCorrupt = 0x7E,
}

impl Opcode {
    /// Decode a wire value.
    pub fn from_u8(v: u8) -> Result<Opcode, FrameError> {
        Ok(match v {
            0x01 => Opcode::Challenge,
            0x02 => Opcode::Hello,
            0x03 => Opcode::Welcome,
            0x10 => Opcode::PutChunk,
            0x11 => Opcode::GetChunk,
            0x12 => Opcode::DeleteChunk,
            0x13 => Opcode::StatChunk,
            0x14 => Opcode::List,
            0x15 => Opcode::Stats,
            0x20 => Opcode::Ping,
            0x21 => Opcode::Bye,
            0x7E => Opcode::FaultCorrupt,
            other => return Err(FrameError::UnknownOpcode(other)),
        })
    }
}

/// The fixed 20-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame kind.
    pub opcode: Opcode,
    /// [`FLAG_RESPONSE`] / [`FLAG_ERROR`].
    pub flags: u8,
    /// Length of the meta section.
    pub meta_len: u16,
    /// Request id (0 for handshake frames and notices).
    pub request_id: u64,
    /// Length of the body.
    pub body_len: u32,
}

impl Header {
    /// Decode a header from the start of `buf`; `Ok(None)` if fewer than [`HEADER_LEN`] bytes
    /// are there. Checks magic, version, opcode and flags, not the limits.
    pub fn decode(buf: &[u8]) -> Result<Option<Header>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut b = &buf[..HEADER_LEN];
        let magic = [b.get_u8(), b.get_u8()];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = b.get_u8();
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let opcode = Opcode::from_u8(b.get_u8())?;
        let flags = b.get_u8();
        let reserved = b.get_u8();
        if flags & !(FLAG_RESPONSE | FLAG_ERROR) != 0
            || (flags & FLAG_ERROR != 0 && flags & FLAG_RESPONSE == 0)
            || reserved != 0
        {
            return Err(FrameError::BadFlags(flags));
        }
        let meta_len = b.get_u16();
        let request_id = b.get_u64();
        let body_len = b.get_u32();
        Ok(Some(Header {
            opcode,
            flags,
            meta_len,
            request_id,
            body_len,
        }))
    }

    /// Refuse a frame whose declared sizes exceed `limits`.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), FrameError> {
        if self.meta_len as usize > limits.max_meta {
            return Err(FrameError::TooLarge {
                part: "meta",
                len: self.meta_len as u64,
                max: limits.max_meta as u64,
            });
        }
        if self.body_len as usize > limits.max_body {
            return Err(FrameError::TooLarge {
                part: "body",
                len: self.body_len as u64,
                max: limits.max_body as u64,
            });
        }
        Ok(())
    }

    /// Total bytes of the frame, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.meta_len as usize + self.body_len as usize
    }

    /// Is this a response?
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Is this an error response?
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// Append the 20 header bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(HEADER_LEN);
        dst.put_slice(&MAGIC);
        dst.put_u8(VERSION);
        dst.put_u8(self.opcode as u8);
        dst.put_u8(self.flags);
        dst.put_u8(0);
        dst.put_u16(self.meta_len);
        dst.put_u64(self.request_id);
        dst.put_u32(self.body_len);
    }
}

/// Is a whole, valid frame at the start of `buf`? `Ok(None)`: not yet, read more.
/// `Ok(Some(header))`: yes, [`Frame::parse`] will cut it. `Err`: the stream is unusable; a
/// frame over `limits` is refused here as soon as its header is in.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Option<Header>, FrameError> {
    let Some(header) = Header::decode(buf)? else {
        return Ok(None);
    };
    header.check_limits(limits)?;
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    Ok(Some(header))
}

/// One frame: header fields plus its meta and body as zero-copy `Bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame kind.
    pub opcode: Opcode,
    /// [`FLAG_RESPONSE`] / [`FLAG_ERROR`].
    pub flags: u8,
    /// Request id.
    pub request_id: u64,
    /// Control fields.
    pub meta: Bytes,
    /// Raw payload (chunk bytes).
    pub body: Bytes,
}

impl Frame {
    /// Cut the next frame out of `buf` if a whole one is there (see [`check`]). The meta and
    /// body share `buf`'s allocation; nothing is copied.
    pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, FrameError> {
        let Some(header) = check(buf, limits)? else {
            return Ok(None);
        };
        let mut whole = buf.split_to(header.frame_len()).freeze();
        whole.advance(HEADER_LEN);
        let meta = whole.split_to(header.meta_len as usize);
        Ok(Some(Frame {
            opcode: header.opcode,
            flags: header.flags,
            request_id: header.request_id,
            meta,
            body: whole,
        }))
    }

    /// The header this frame encodes to. Panics only on sections beyond the format's maxima,
    /// which the constructors in this module never produce.
    pub fn header(&self) -> Header {
        Header {
            opcode: self.opcode,
            flags: self.flags,
            meta_len: u16::try_from(self.meta.len()).expect("meta over 65535 bytes"),
            request_id: self.request_id,
            body_len: u32::try_from(self.body.len()).expect("body over 4 GiB"),
        }
    }

    /// Append header and meta to `dst`; the caller writes [`Frame::body`] after them (so the
    /// chunk bytes are never copied into a staging buffer).
    pub fn encode_head(&self, dst: &mut BytesMut) {
        self.header().encode(dst);
        dst.extend_from_slice(&self.meta);
    }

    /// The whole frame in one buffer (copies the body; for tests and small frames).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.meta.len() + self.body.len());
        self.encode_head(&mut out);
        out.extend_from_slice(&self.body);
        out.freeze()
    }

    fn new(opcode: Opcode, flags: u8, request_id: u64, meta: BytesMut, body: Bytes) -> Frame {
        Frame {
            opcode,
            flags,
            request_id,
            meta: meta.freeze(),
            body,
        }
    }

    /// Is this a response?
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Is this an error response?
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Cursor over meta bytes: every read is bounds-checked, trailing bytes are an error.          */
/* ------------------------------------------------------------------------------------------ */

struct Cur {
    buf: Bytes,
    what: &'static str,
}

impl Cur {
    fn new(buf: Bytes, what: &'static str) -> Cur {
        Cur { buf, what }
    }
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.buf.len() < n {
            Err(FrameError::Malformed(self.what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, FrameError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn string(&mut self, n: usize) -> Result<String, FrameError> {
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::Malformed(self.what))
    }
    fn chunk_id(&mut self) -> Result<ChunkId, FrameError> {
        let len = self.u8()? as usize;
        if len == 0 {
            return Err(FrameError::Malformed("chunk id (empty)"));
        }
        Ok(ChunkId(self.bytes(len)?))
    }
    fn state(&mut self) -> Result<NodeState, FrameError> {
        Ok(NodeState {
            term: self.u64()?,
            hash: self.array()?,
        })
    }
    fn stats(&mut self) -> Result<StoreStats, FrameError> {
        Ok(StoreStats {
            used_bytes: self.u64()?,
            chunks: self.u64()?,
            capacity_bytes: self.u64()?,
        })
    }
    fn ack(&mut self) -> Result<Ack, FrameError> {
        Ok(Ack {
            state: self.state()?,
            stats: self.stats()?,
        })
    }
    fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed(self.what))
        }
    }
}

fn put_chunk_id(dst: &mut BytesMut, id: &ChunkId) {
    dst.put_u8(id.0.len() as u8);
    dst.put_slice(&id.0);
}

fn put_state(dst: &mut BytesMut, s: &NodeState) {
    dst.put_u64(s.term);
    dst.put_slice(&s.hash);
}

fn put_stats(dst: &mut BytesMut, s: &StoreStats) {
    dst.put_u64(s.used_bytes);
    dst.put_u64(s.chunks);
    dst.put_u64(s.capacity_bytes);
}

fn put_ack(dst: &mut BytesMut, a: &Ack) {
    put_state(dst, &a.state);
    put_stats(dst, &a.stats);
}

/* ------------------------------------------------------------------------------------------ */
/* Value types                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/// A chunk's name: 1..=255 opaque bytes. The gateway's layout is [`ChunkId::for_object`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(Bytes);

impl ChunkId {
    /// Longest id.
    pub const MAX_LEN: usize = 255;
    /// Length of the structured ids made by [`ChunkId::for_object`].
    pub const OBJECT_LEN: usize = 22;

    /// Wrap opaque bytes (1..=255 of them).
    pub fn new(bytes: impl Into<Bytes>) -> Result<ChunkId, FrameError> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(FrameError::Malformed("chunk id length"));
        }
        Ok(ChunkId(bytes))
    }

    /// The gateway's naming: object (or object version) id u128 | piece u32 | chunk index u16,
    /// big-endian, 22 bytes, so the ids of one object sort together and in order.
    pub fn for_object(object: u128, piece: u32, chunk: u16) -> ChunkId {
        let mut b = BytesMut::with_capacity(Self::OBJECT_LEN);
        b.put_u128(object);
        b.put_u32(piece);
        b.put_u16(chunk);
        ChunkId(b.freeze())
    }

    /// The same id in an allocation of its own. An id decoded from a frame shares the frame's
    /// receive buffer; a store that keeps it as a key would keep that whole buffer alive.
    pub fn detached(&self) -> ChunkId {
        ChunkId(Bytes::copy_from_slice(&self.0))
    }

    /// The parts of an id made by [`ChunkId::for_object`].
    pub fn object_parts(&self) -> Option<(u128, u32, u16)> {
        if self.0.len() != Self::OBJECT_LEN {
            return None;
        }
        let mut b = &self.0[..];
        Some((b.get_u128(), b.get_u32(), b.get_u16()))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    #[allow(clippy::len_without_is_empty)] // never empty by construction
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// Summary of a function's memory: mutation count and chained hash (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct NodeState {
    /// Number of mutations applied since the process started (or was reset).
    pub term: u64,
    /// Chained digest of those mutations; all zero for the empty state.
    #[serde(with = "hex_array")]
    pub hash: [u8; 16],
}

/// Kinds of mutation chained into [`NodeState::hash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutation {
    /// A chunk was stored (or replaced).
    Put = 1,
    /// A chunk was removed.
    Delete = 2,
}

impl NodeState {
    /// The state of a fresh (or reset) function.
    pub const EMPTY: NodeState = NodeState {
        term: 0,
        hash: [0; 16],
    };

    /// Is this the empty state?
    pub fn is_empty(&self) -> bool {
        *self == NodeState::EMPTY
    }

    /// The state after one more mutation:
    /// `term' = term + 1`, `hash' = SHA-256("memfn-log-v1\0" | hash | term' u64 | op u8 |
    /// id_len u8 | id | crc32c u32 | len u64)[..16]`.
    pub fn advance(&self, op: Mutation, id: &ChunkId, crc: u32, len: u64) -> NodeState {
        let term = self.term.wrapping_add(1);
        let mut h = Sha256::new();
        h.update(b"memfn-log-v1\0");
        h.update(self.hash);
        h.update(term.to_be_bytes());
        h.update([op as u8, id.len() as u8]);
        h.update(id.as_bytes());
        h.update(crc.to_be_bytes());
        h.update(len.to_be_bytes());
        let digest = h.finalize();
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&digest[..16]);
        NodeState { term, hash }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.term, hex::encode(self.hash))
    }
}

mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(&s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

/// Memory accounting of a function's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoreStats {
    /// Bytes charged against the capacity (chunk bytes plus a per-chunk overhead).
    pub used_bytes: u64,
    /// Number of chunks held.
    pub chunks: u64,
    /// Bytes the function may hold (memory size minus the reserved overhead).
    pub capacity_bytes: u64,
}

impl StoreStats {
    /// Bytes still free.
    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.used_bytes)
    }
}

/// State and statistics after a mutation (or on request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ack {
    /// The node state after the operation.
    pub state: NodeState,
    /// The store statistics after the operation.
    pub stats: StoreStats,
}

/// An entry of a LIST page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The chunk.
    pub id: ChunkId,
    /// Its length in bytes.
    pub len: u64,
    /// Its CRC32C.
    pub crc32c: u32,
}

/// What an invocation asks the function to do (carried in the payload and echoed in HELLO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Dial back, authenticate, serve chunk requests until idle or near the deadline.
    Serve,
    /// Dial back, report state, say bye, return: keeps the instance warm for little money.
    Warmup,
    /// Drop everything held (state becomes empty), then serve.
    Reset,
    /// Test only (needs MEMFN_FAULT_INJECTION=1): sleep `sleep_ms` ignoring the deadline.
    Sleep,
}

impl Command {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Command::Serve => 0,
            Command::Warmup => 1,
            Command::Reset => 2,
            Command::Sleep => 0x80,
        }
    }
    /// From the wire value.
    pub fn from_u8(v: u8) -> Result<Command, FrameError> {
        Ok(match v {
            0 => Command::Serve,
            1 => Command::Warmup,
            2 => Command::Reset,
            0x80 => Command::Sleep,
            _ => return Err(FrameError::Malformed("hello command")),
        })
    }
}

/// The function's verdict on the gateway's view of its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViewCheck {
    /// The memory holds exactly what the gateway thinks.
    Match,
    /// Both empty: a new node, nothing was expected.
    Fresh,
    /// The gateway expected data but the memory is empty: the instance was replaced.
    Lost,
    /// Both differ otherwise (lost acknowledgements, another gateway, a node-id change).
    Diverged,
}

impl ViewCheck {
    /// Compare the gateway's view with what the memory holds.
    pub fn compare(view: &NodeState, actual: &NodeState) -> ViewCheck {
        match (view.is_empty(), actual.is_empty()) {
            (true, true) => ViewCheck::Fresh,
            (false, true) => ViewCheck::Lost,
            _ if view == actual => ViewCheck::Match,
            _ => ViewCheck::Diverged,
        }
    }
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            ViewCheck::Match => 0,
            ViewCheck::Fresh => 1,
            ViewCheck::Lost => 2,
            ViewCheck::Diverged => 3,
        }
    }
    /// From the wire value.
    pub fn from_u8(v: u8) -> Result<ViewCheck, FrameError> {
        Ok(match v {
            0 => ViewCheck::Match,
            1 => ViewCheck::Fresh,
            2 => ViewCheck::Lost,
            3 => ViewCheck::Diverged,
            _ => return Err(FrameError::Malformed("hello view")),
        })
    }
}

/// Random id of a function process (changes when the provider replaces the instance).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct InstanceId(#[serde(with = "hex_array")] pub [u8; 16]);

impl InstanceId {
    /// A fresh random id.
    pub fn random() -> InstanceId {
        InstanceId(rand::random())
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/// Error codes of error frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No such chunk.
    NotFound,
    /// The chunk does not fit in the function's capacity.
    Full,
    /// CRC mismatch (on store or on read).
    Corrupt,
    /// Malformed or invalid request (bad range, unknown command...).
    BadRequest,
    /// Authentication failed.
    Unauthenticated,
    /// A frame over the receiver's limits.
    FrameTooLarge,
    /// Opcode or feature not supported here.
    Unsupported,
    /// The function is stopping; send no more.
    ShuttingDown,
    /// Unexpected failure inside the function.
    Internal,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::NotFound => 1,
            ErrorCode::Full => 2,
            ErrorCode::Corrupt => 3,
            ErrorCode::BadRequest => 4,
            ErrorCode::Unauthenticated => 5,
            ErrorCode::FrameTooLarge => 6,
            ErrorCode::Unsupported => 7,
            ErrorCode::ShuttingDown => 8,
            ErrorCode::Internal => 9,
            ErrorCode::Other(c) => c,
        }
    }
    /// From the wire value (unknown values are kept as [`ErrorCode::Other`]).
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::Full,
            3 => ErrorCode::Corrupt,
            4 => ErrorCode::BadRequest,
            5 => ErrorCode::Unauthenticated,
            6 => ErrorCode::FrameTooLarge,
            7 => ErrorCode::Unsupported,
            8 => ErrorCode::ShuttingDown,
            9 => ErrorCode::Internal,
            c => ErrorCode::Other(c),
        }
    }
}

/// The meta of an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong.
    pub code: ErrorCode,
    /// Code-specific numbers (FULL: needed, free; FRAME_TOO_LARGE: length, limit).
    pub detail: [u64; 2],
    /// Human-readable text (truncated to [`MAX_ERROR_MESSAGE`] bytes).
    pub message: String,
}

impl ErrorBody {
    /// An error with no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            detail: [0, 0],
            message: message.into(),
        }
    }

    /// Frame answering `request_id` of kind `op`.
    pub fn into_frame(self, op: Opcode, request_id: u64) -> Frame {
        let mut msg = self.message;
        if msg.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg.truncate(end);
        }
        let mut m = BytesMut::with_capacity(20 + msg.len());
        m.put_u16(self.code.to_u16());
        m.put_u64(self.detail[0]);
        m.put_u64(self.detail[1]);
        m.put_u16(msg.len() as u16);
        m.put_slice(msg.as_bytes());
        Frame::new(op, FLAG_RESPONSE | FLAG_ERROR, request_id, m, Bytes::new())
    }

    /// Decode the meta of an error frame.
    pub fn decode(meta: Bytes) -> Result<ErrorBody, FrameError> {
        let mut c = Cur::new(meta, "error");
        let code = ErrorCode::from_u16(c.u16()?);
        let detail = [c.u64()?, c.u64()?];
        let len = c.u16()? as usize;
        if len > MAX_ERROR_MESSAGE {
            return Err(FrameError::Malformed("error message length"));
        }
        let message = c.string(len)?;
        c.finish()?;
        Ok(ErrorBody {
            code,
            detail,
            message,
        })
    }
}

impl From<&FrameError> for ErrorBody {
    fn from(e: &FrameError) -> Self {
        match e {
            FrameError::TooLarge { len, max, .. } => ErrorBody {
                code: ErrorCode::FrameTooLarge,
                detail: [*len, *max],
                message: e.to_string(),
            },
            FrameError::UnknownOpcode(_) | FrameError::UnsupportedVersion(_) => {
                ErrorBody::new(ErrorCode::Unsupported, e.to_string())
            }
            _ => ErrorBody::new(ErrorCode::BadRequest, e.to_string()),
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Handshake                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/// The gateway's CHALLENGE frame.
pub fn challenge_frame(nonce: &[u8; NONCE_LEN]) -> Frame {
    Frame::new(
        Opcode::Challenge,
        0,
        0,
        BytesMut::from(&nonce[..]),
        Bytes::new(),
    )
}

/// The nonce out of a CHALLENGE frame.
pub fn decode_challenge(frame: &Frame) -> Result<[u8; NONCE_LEN], FrameError> {
    if frame.opcode != Opcode::Challenge || frame.flags != 0 || !frame.body.is_empty() {
        return Err(FrameError::Unexpected("expected CHALLENGE"));
    }
    let mut c = Cur::new(frame.meta.clone(), "challenge");
    let nonce = c.array()?;
    c.finish()?;
    Ok(nonce)
}

/// The gateway's WELCOME frame.
pub fn welcome_frame() -> Frame {
    Frame::new(Opcode::Welcome, 0, 0, BytesMut::new(), Bytes::new())
}

/// The function's introduction (HELLO meta without the MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The cache node this function serves as.
    pub node_id: String,
    /// Random id of the function process.
    pub instance_id: InstanceId,
    /// The invocation token from the payload.
    pub token: Bytes,
    /// What this invocation was asked to do.
    pub command: Command,
    /// The function's verdict on the gateway's view.
    pub view: ViewCheck,
    /// What the memory holds.
    pub state: NodeState,
    /// Store statistics.
    pub stats: StoreStats,
    /// The Lambda request id of this invocation.
    pub invocation_id: String,
    /// When the function stops serving (unix ms).
    pub deadline_unix_ms: u64,
}

type HmacSha256 = Hmac<Sha256>;

fn hello_mac(secret: &[u8], nonce: &[u8; NONCE_LEN], signed: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(AUTH_DOMAIN);
    mac.update(nonce);
    mac.update(signed);
    mac
}

impl Hello {
    /// The HELLO frame, MACed with `secret` over `nonce`.
    pub fn into_frame(&self, secret: &[u8], nonce: &[u8; NONCE_LEN]) -> Result<Frame, FrameError> {
        if self.node_id.is_empty() || self.node_id.len() > MAX_NODE_ID {
            return Err(FrameError::Malformed("hello node id length"));
        }
        if self.token.len() > u8::MAX as usize {
            return Err(FrameError::Malformed("hello token length"));
        }
        if self.invocation_id.len() > MAX_INVOCATION_ID {
            return Err(FrameError::Malformed("hello invocation id length"));
        }
        let mut m = BytesMut::with_capacity(160 + self.node_id.len() + self.token.len());
        m.put_u8(self.node_id.len() as u8);
        m.put_slice(self.node_id.as_bytes());
        m.put_slice(&self.instance_id.0);
        m.put_u8(self.token.len() as u8);
        m.put_slice(&self.token);
        m.put_u8(self.command.to_u8());
        m.put_u8(self.view.to_u8());
        put_state(&mut m, &self.state);
        put_stats(&mut m, &self.stats);
        m.put_u8(self.invocation_id.len() as u8);
        m.put_slice(self.invocation_id.as_bytes());
        m.put_u64(self.deadline_unix_ms);
        let tag = hello_mac(secret, nonce, &m).finalize().into_bytes();
        m.put_slice(&tag);
        Ok(Frame::new(Opcode::Hello, 0, 0, m, Bytes::new()))
    }

    /// Decode a HELLO frame without checking its MAC; returns the MAC too.
    pub fn decode(frame: &Frame) -> Result<(Hello, [u8; MAC_LEN]), FrameError> {
        if frame.opcode != Opcode::Hello || frame.flags != 0 || !frame.body.is_empty() {
            return Err(FrameError::Unexpected("expected HELLO"));
        }
        let mut c = Cur::new(frame.meta.clone(), "hello");
        let n = c.u8()? as usize;
        if n == 0 || n > MAX_NODE_ID {
            return Err(FrameError::Malformed("hello node id length"));
        }
        let node_id = c.string(n)?;
        let instance_id = InstanceId(c.array()?);
        let tn = c.u8()? as usize;
        let token = c.bytes(tn)?;
        let command = Command::from_u8(c.u8()?)?;
        let view = ViewCheck::from_u8(c.u8()?)?;
        let state = c.state()?;
        let stats = c.stats()?;
        let iv = c.u8()? as usize;
        if iv > MAX_INVOCATION_ID {
            return Err(FrameError::Malformed("hello invocation id length"));
        }
        let invocation_id = c.string(iv)?;
        let deadline_unix_ms = c.u64()?;
        let mac = c.array()?;
        c.finish()?;
        let hello = Hello {
            node_id,
            instance_id,
            token,
            command,
            view,
            state,
            stats,
            invocation_id,
            deadline_unix_ms,
        };
        Ok((hello, mac))
    }

    /// Decode a HELLO frame and check its MAC against `secret` and `nonce` (constant time).
    pub fn verify(
        frame: &Frame,
        secret: &[u8],
        nonce: &[u8; NONCE_LEN],
    ) -> Result<Hello, AuthError> {
        let (hello, tag) = Hello::decode(frame).map_err(AuthError::Frame)?;
        let signed = &frame.meta[..frame.meta.len() - MAC_LEN];
        hello_mac(secret, nonce, signed)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadMac)?;
        Ok(hello)
    }
}

/// Why a HELLO was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a well-formed HELLO.
    #[error("bad hello: {0}")]
    Frame(FrameError),
    /// The MAC does not match the deployment secret (wrong secret or tampered fields).
    #[error("hello MAC does not verify (wrong secret?)")]
    BadMac,
    /// The token was not issued for this node.
    #[error("invocation token not accepted for node {0}")]
    BadToken(String),
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/// A byte range of a chunk: `offset` and `length` (`None` = to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes; `None` reads to the end of the chunk.
    pub length: Option<u64>,
}

impl ByteRange {
    /// The whole chunk.
    pub const ALL: ByteRange = ByteRange {
        offset: 0,
        length: None,
    };

    /// Resolve against a chunk of `len` bytes: the `start..end` to return, or `None` if the
    /// range starts beyond the end (a range may be cut short by the end of the chunk).
    pub fn resolve(&self, len: u64) -> Option<(u64, u64)> {
        if self.offset > len {
            return None;
        }
        let end = match self.length {
            None => len,
            Some(n) => self.offset.saturating_add(n).min(len),
        };
        Some((self.offset, end))
    }
}

/// A request from the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Store `data` under `id`; `crc32c` is the sender's checksum of `data`.
    Put {
        /// Chunk id.
        id: ChunkId,
        /// CRC32C of `data` computed by the sender.
        crc32c: u32,
        /// The chunk bytes.
        data: Bytes,
    },
    /// Read a chunk or part of it.
    Get {
        /// Chunk id.
        id: ChunkId,
        /// Which bytes.
        range: ByteRange,
    },
    /// Remove a chunk.
    Delete {
        /// Chunk id.
        id: ChunkId,
    },
    /// Length and CRC of a chunk.
    Stat {
        /// Chunk id.
        id: ChunkId,
    },
    /// Ids greater than `after` in ascending order, at most `limit`.
    List {
        /// Start after this id (`None`: from the first).
        after: Option<ChunkId>,
        /// Page size (clamped to 1..=[`MAX_LIST_LIMIT`]).
        limit: u32,
    },
    /// State and statistics.
    Stats,
    /// Round-trip probe; the body is echoed.
    Ping {
        /// Echoed bytes.
        payload: Bytes,
    },
    /// End the session.
    Bye,
    /// Test only: corrupt a stored chunk.
    FaultCorrupt {
        /// Chunk id.
        id: ChunkId,
    },
}

impl Request {
    /// The opcode of this request.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Put { .. } => Opcode::PutChunk,
            Request::Get { .. } => Opcode::GetChunk,
            Request::Delete { .. } => Opcode::DeleteChunk,
            Request::Stat { .. } => Opcode::StatChunk,
            Request::List { .. } => Opcode::List,
            Request::Stats => Opcode::Stats,
            Request::Ping { .. } => Opcode::Ping,
            Request::Bye => Opcode::Bye,
            Request::FaultCorrupt { .. } => Opcode::FaultCorrupt,
        }
    }

    /// Encode as a frame with the given request id.
    pub fn into_frame(self, request_id: u64) -> Frame {
        let op = self.opcode();
        let mut m = BytesMut::new();
        let mut body = Bytes::new();
        match self {
            Request::Put { id, crc32c, data } => {
                put_chunk_id(&mut m, &id);
                m.put_u32(crc32c);
                body = data;
            }
            Request::Get { id, range } => {
                put_chunk_id(&mut m, &id);
                m.put_u64(range.offset);
                m.put_u64(range.length.unwrap_or(u64::MAX));
            }
            Request::Delete { id } | Request::Stat { id } | Request::FaultCorrupt { id } => {
                put_chunk_id(&mut m, &id)
            }
            Request::List { after, limit } => {
                match after {
                    Some(id) => put_chunk_id(&mut m, &id),
                    None => m.put_u8(0),
                }
                m.put_u32(limit);
            }
            Request::Stats | Request::Bye => {}
            Request::Ping { payload } => body = payload,
        }
        Frame::new(op, 0, request_id, m, body)
    }

    /// Decode a request frame (a frame without the RESPONSE flag).
    pub fn from_frame(frame: Frame) -> Result<Request, FrameError> {
        if frame.flags != 0 {
            return Err(FrameError::Unexpected("response where a request belongs"));
        }
        let no_body = |f: &Frame| {
            if f.body.is_empty() {
                Ok(())
            } else {
                Err(FrameError::Malformed("unexpected body"))
            }
        };
        let mut c = Cur::new(frame.meta.clone(), "request meta");
        let req = match frame.opcode {
            Opcode::PutChunk => {
                let id = c.chunk_id()?;
                let crc32c = c.u32()?;
                Request::Put {
                    id,
                    crc32c,
                    data: frame.body.clone(),
                }
            }
            Opcode::GetChunk => {
                no_body(&frame)?;
                let id = c.chunk_id()?;
                let offset = c.u64()?;
                let length = match c.u64()? {
                    u64::MAX => None,
                    n => Some(n),
                };
                Request::Get {
                    id,
                    range: ByteRange { offset, length },
                }
            }
            Opcode::DeleteChunk | Opcode::StatChunk | Opcode::FaultCorrupt => {
                no_body(&frame)?;
                let id = c.chunk_id()?;
                match frame.opcode {
                    Opcode::DeleteChunk => Request::Delete { id },
                    Opcode::StatChunk => Request::Stat { id },
                    _ => Request::FaultCorrupt { id },
                }
            }
            Opcode::List => {
                no_body(&frame)?;
                let n = c.u8()? as usize;
                let after = if n == 0 {
                    None
                } else {
                    Some(ChunkId(c.bytes(n)?))
                };
                let limit = c.u32()?;
                Request::List { after, limit }
            }
            Opcode::Stats => {
                no_body(&frame)?;
                Request::Stats
            }
            Opcode::Ping => Request::Ping {
                payload: frame.body.clone(),
            },
            Opcode::Bye => {
                no_body(&frame)?;
                Request::Bye
            }
            Opcode::Challenge | Opcode::Hello | Opcode::Welcome => {
                return Err(FrameError::Unexpected(
                    "handshake frame after the handshake",
                ));
            }
        };
        c.finish()?;
        Ok(req)
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Responses                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/// A response from the function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// PUT_CHUNK succeeded.
    Put(Ack),
    /// GET_CHUNK data.
    Get {
        /// Length of the whole chunk.
        chunk_len: u64,
        /// Offset of `data` in the chunk.
        offset: u64,
        /// CRC32C of `data`.
        crc32c: u32,
        /// The bytes.
        data: Bytes,
    },
    /// DELETE_CHUNK done.
    Delete {
        /// Whether the chunk was there.
        existed: bool,
        /// State after the delete.
        ack: Ack,
    },
    /// STAT_CHUNK answer.
    Stat {
        /// Chunk length.
        len: u64,
        /// Chunk CRC32C.
        crc32c: u32,
    },
    /// A LIST page.
    List {
        /// Entries in ascending id order.
        entries: Vec<ChunkInfo>,
        /// More entries follow the last one.
        more: bool,
    },
    /// STATS answer.
    Stats(Ack),
    /// PING echo.
    Pong {
        /// The echoed body.
        payload: Bytes,
    },
    /// BYE acknowledged (for a request) or announced (the notice, request id 0).
    Bye(Ack),
    /// FAULT_CORRUPT done.
    FaultCorrupt,
    /// The request failed.
    Error(ErrorBody),
}

impl Response {
    /// Encode as the answer to request `request_id` of kind `request_op`.
    pub fn into_frame(self, request_op: Opcode, request_id: u64) -> Frame {
        let mut m = BytesMut::new();
        let mut body = Bytes::new();
        match self {
            Response::Error(e) => return e.into_frame(request_op, request_id),
            Response::Put(ack) | Response::Stats(ack) | Response::Bye(ack) => put_ack(&mut m, &ack),
            Response::Get {
                chunk_len,
                offset,
                crc32c,
                data,
            } => {
                m.put_u64(chunk_len);
                m.put_u64(offset);
                m.put_u32(crc32c);
                body = data;
            }
            Response::Delete { existed, ack } => {
                m.put_u8(existed as u8);
                put_ack(&mut m, &ack);
            }
            Response::Stat { len, crc32c } => {
                m.put_u64(len);
                m.put_u32(crc32c);
            }
            Response::List { entries, more } => {
                m.put_u32(entries.len() as u32);
                m.put_u8(more as u8);
                let mut b = BytesMut::with_capacity(entries.iter().map(|e| 13 + e.id.len()).sum());
                for e in &entries {
                    put_chunk_id(&mut b, &e.id);
                    b.put_u64(e.len);
                    b.put_u32(e.crc32c);
                }
                body = b.freeze();
            }
            Response::Pong { payload } => body = payload,
            Response::FaultCorrupt => {}
        }
        Frame::new(request_op, FLAG_RESPONSE, request_id, m, body)
    }

    /// The function's unsolicited BYE notice.
    pub fn bye_notice(ack: Ack) -> Frame {
        let mut m = BytesMut::with_capacity(48);
        put_ack(&mut m, &ack);
        Frame::new(Opcode::Bye, 0, 0, m, Bytes::new())
    }

    /// Is `frame` the function's BYE notice? Returns its Ack.
    pub fn decode_bye_notice(frame: &Frame) -> Result<Option<Ack>, FrameError> {
        if frame.opcode != Opcode::Bye || frame.flags != 0 || frame.request_id != 0 {
            return Ok(None);
        }
        let mut c = Cur::new(frame.meta.clone(), "bye notice");
        let ack = c.ack()?;
        c.finish()?;
        Ok(Some(ack))
    }

    /// Decode a response frame (RESPONSE flag set).
    pub fn from_frame(frame: Frame) -> Result<Response, FrameError> {
        if !frame.is_response() {
            return Err(FrameError::Unexpected("request where a response belongs"));
        }
        if frame.is_error() {
            if !frame.body.is_empty() {
                return Err(FrameError::Malformed("error with a body"));
            }
            return Ok(Response::Error(ErrorBody::decode(frame.meta)?));
        }
        let body_allowed = matches!(frame.opcode, Opcode::GetChunk | Opcode::List | Opcode::Ping);
        if !body_allowed && !frame.body.is_empty() {
            return Err(FrameError::Malformed("unexpected body"));
        }
        let mut c = Cur::new(frame.meta.clone(), "response meta");
        let resp = match frame.opcode {
            Opcode::PutChunk => Response::Put(c.ack()?),
            Opcode::Stats => Response::Stats(c.ack()?),
            Opcode::Bye => Response::Bye(c.ack()?),
            Opcode::GetChunk => {
                let chunk_len = c.u64()?;
                let offset = c.u64()?;
                let crc32c = c.u32()?;
                let data = frame.body.clone();
                let end = offset.checked_add(data.len() as u64);
                if end.is_none_or(|end| end > chunk_len) {
                    return Err(FrameError::Malformed("get range beyond chunk"));
                }
                Response::Get {
                    chunk_len,
                    offset,
                    crc32c,
                    data,
                }
            }
            Opcode::DeleteChunk => {
                let existed = match c.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Malformed("delete existed flag")),
                };
                Response::Delete {
                    existed,
                    ack: c.ack()?,
                }
            }
            Opcode::StatChunk => Response::Stat {
                len: c.u64()?,
                crc32c: c.u32()?,
            },
            Opcode::List => {
                let count = c.u32()?;
                let more = match c.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Malformed("list more flag")),
                };
                let mut b = Cur::new(frame.body.clone(), "list entries");
                // Each entry takes at least 14 bytes: never trust `count` for the allocation.
                let mut entries = Vec::with_capacity((count as usize).min(frame.body.len() / 14));
                for _ in 0..count {
                    let id = b.chunk_id()?;
                    entries.push(ChunkInfo {
                        id,
                        len: b.u64()?,
                        crc32c: b.u32()?,
                    });
                }
                b.finish()?;
                Response::List { entries, more }
            }
            Opcode::Ping => Response::Pong {
                payload: frame.body.clone(),
            },
            Opcode::FaultCorrupt => Response::FaultCorrupt,
            Opcode::Challenge | Opcode::Hello | Opcode::Welcome => {
                return Err(FrameError::Unexpected("handshake opcode in a response"));
            }
        };
        c.finish()?;
        Ok(resp)
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Fuzzing                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/// The body of the cargo-fuzz target `decode` (and of the CI test that runs it over random
/// inputs): feeds arbitrary bytes through every decoder. It must never panic, and whatever
/// decodes must re-encode to a frame that decodes to the same value.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    for limits in [
        Limits::DEFAULT,
        Limits::HANDSHAKE,
        Limits {
            max_meta: 64,
            max_body: 64,
        },
    ] {
        let _ = check(data, &limits);
        let mut buf = BytesMut::from(data);
        let mut frames = 0;
        while let Ok(Some(frame)) = Frame::parse(&mut buf, &limits) {
            frames += 1;
            assert_eq!(
                Frame::parse(&mut BytesMut::from(&frame.to_bytes()[..]), &limits),
                Ok(Some(frame.clone()))
            );
            if let Ok(req) = Request::from_frame(frame.clone()) {
                let again = Request::from_frame(req.clone().into_frame(frame.request_id));
                assert_eq!(again, Ok(req));
            }
            if let Ok(resp) = Response::from_frame(frame.clone()) {
                let again =
                    Response::from_frame(resp.clone().into_frame(frame.opcode, frame.request_id));
                assert_eq!(again, Ok(resp));
            }
            if let Ok((hello, _mac)) = Hello::decode(&frame) {
                let nonce = [7u8; NONCE_LEN];
                let signed = hello
                    .into_frame(b"fuzz-secret", &nonce)
                    .expect("decoded hello re-encodes");
                assert_eq!(Hello::verify(&signed, b"fuzz-secret", &nonce), Ok(hello));
                assert!(Hello::verify(&signed, b"other-secret", &nonce).is_err());
            }
            let _ = decode_challenge(&frame);
            let _ = Response::decode_bye_notice(&frame);
            if frames > 64 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_id() -> impl Strategy<Value = ChunkId> {
        prop::collection::vec(any::<u8>(), 1..=255).prop_map(|v| ChunkId::new(v).unwrap())
    }
    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }
    fn arb_state() -> impl Strategy<Value = NodeState> {
        (any::<u64>(), any::<[u8; 16]>()).prop_map(|(term, hash)| NodeState { term, hash })
    }
    fn arb_ack() -> impl Strategy<Value = Ack> {
        (arb_state(), any::<(u64, u64, u64)>()).prop_map(|(state, (u, c, k))| Ack {
            state,
            stats: StoreStats {
                used_bytes: u,
                chunks: c,
                capacity_bytes: k,
            },
        })
    }
    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (arb_id(), any::<u32>(), arb_bytes(4096)).prop_map(|(id, crc32c, data)| Request::Put {
                id,
                crc32c,
                data
            }),
            (arb_id(), any::<u64>(), any::<Option<u64>>()).prop_map(|(id, offset, length)| {
                Request::Get {
                    id,
                    range: ByteRange {
                        offset,
                        length: length.filter(|l| *l != u64::MAX),
                    },
                }
            }),
            arb_id().prop_map(|id| Request::Delete { id }),
            arb_id().prop_map(|id| Request::Stat { id }),
            arb_id().prop_map(|id| Request::FaultCorrupt { id }),
            (prop::option::of(arb_id()), any::<u32>())
                .prop_map(|(after, limit)| Request::List { after, limit }),
            Just(Request::Stats),
            Just(Request::Bye),
            arb_bytes(512).prop_map(|payload| Request::Ping { payload }),
        ]
    }
    fn arb_response() -> impl Strategy<Value = (Opcode, Response)> {
        prop_oneof![
            arb_ack().prop_map(|a| (Opcode::PutChunk, Response::Put(a))),
            arb_ack().prop_map(|a| (Opcode::Stats, Response::Stats(a))),
            arb_ack().prop_map(|a| (Opcode::Bye, Response::Bye(a))),
            (arb_bytes(4096), any::<u32>(), 0u64..1000, 0u64..1000).prop_map(
                |(data, crc32c, off, extra)| (
                    Opcode::GetChunk,
                    Response::Get {
                        chunk_len: off + data.len() as u64 + extra,
                        offset: off,
                        crc32c,
                        data
                    }
                )
            ),
            (any::<bool>(), arb_ack()).prop_map(|(existed, ack)| (
                Opcode::DeleteChunk,
                Response::Delete { existed, ack }
            )),
            (any::<u64>(), any::<u32>())
                .prop_map(|(len, crc32c)| (Opcode::StatChunk, Response::Stat { len, crc32c })),
            (
                prop::collection::vec((arb_id(), any::<u64>(), any::<u32>()), 0..20),
                any::<bool>()
            )
                .prop_map(|(v, more)| (
                    Opcode::List,
                    Response::List {
                        entries: v
                            .into_iter()
                            .map(|(id, len, crc32c)| ChunkInfo { id, len, crc32c })
                            .collect(),
                        more
                    }
                )),
            arb_bytes(512).prop_map(|payload| (Opcode::Ping, Response::Pong { payload })),
            Just((Opcode::FaultCorrupt, Response::FaultCorrupt)),
            (any::<u16>(), any::<[u64; 2]>(), "[a-z ]{0,64}").prop_map(
                |(code, detail, message)| (
                    Opcode::GetChunk,
                    Response::Error(ErrorBody {
                        code: ErrorCode::from_u16(code),
                        detail,
                        message
                    })
                )
            ),
        ]
    }
    fn arb_hello() -> impl Strategy<Value = Hello> {
        (
            "[a-z0-9-]{1,40}",
            any::<[u8; 16]>(),
            arb_bytes(255),
            prop_oneof![
                Just(Command::Serve),
                Just(Command::Warmup),
                Just(Command::Reset),
                Just(Command::Sleep)
            ],
            prop_oneof![
                Just(ViewCheck::Match),
                Just(ViewCheck::Fresh),
                Just(ViewCheck::Lost),
                Just(ViewCheck::Diverged)
            ],
            arb_ack(),
            "[a-f0-9-]{0,64}",
            any::<u64>(),
        )
            .prop_map(
                |(node_id, iid, token, command, view, ack, invocation_id, deadline_unix_ms)| {
                    Hello {
                        node_id,
                        instance_id: InstanceId(iid),
                        token,
                        command,
                        view,
                        state: ack.state,
                        stats: ack.stats,
                        invocation_id,
                        deadline_unix_ms,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn request_roundtrip(req in arb_request(), rid in 1u64..) {
            let frame = req.clone().into_frame(rid);
            let mut buf = BytesMut::from(&frame.to_bytes()[..]);
            let parsed = Frame::parse(&mut buf, &Limits::DEFAULT).unwrap().unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(parsed.request_id, rid);
            prop_assert_eq!(Request::from_frame(parsed).unwrap(), req);
        }

        #[test]
        fn response_roundtrip((op, resp) in arb_response(), rid in any::<u64>()) {
            let frame = resp.clone().into_frame(op, rid);
            let mut buf = BytesMut::from(&frame.to_bytes()[..]);
            let parsed = Frame::parse(&mut buf, &Limits::DEFAULT).unwrap().unwrap();
            prop_assert_eq!(Response::from_frame(parsed).unwrap(), resp);
        }

        #[test]
        fn hello_roundtrip_and_mac(hello in arb_hello(), nonce in any::<[u8; 32]>(), flip in any::<prop::sample::Index>()) {
            let frame = hello.into_frame(b"the-deployment-secret", &nonce).unwrap();
            let parsed = Frame::parse(&mut BytesMut::from(&frame.to_bytes()[..]), &Limits::HANDSHAKE).unwrap().unwrap();
            prop_assert_eq!(Hello::verify(&parsed, b"the-deployment-secret", &nonce), Ok(hello.clone()));
            prop_assert_eq!(Hello::verify(&parsed, b"another-secret-entirely", &nonce), Err(AuthError::BadMac));
            let mut other_nonce = nonce;
            other_nonce[0] ^= 1;
            prop_assert_eq!(Hello::verify(&parsed, b"the-deployment-secret", &other_nonce), Err(AuthError::BadMac));
            // Flipping any byte of the meta breaks either decoding or the MAC.
            let mut meta = parsed.meta.to_vec();
            let i = flip.index(meta.len());
            meta[i] ^= 0x40;
            let tampered = Frame { meta: Bytes::from(meta), ..parsed };
            prop_assert!(Hello::verify(&tampered, b"the-deployment-secret", &nonce).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            fuzz_decode(&data);
        }

        #[test]
        fn valid_prefix_then_garbage_never_panics(req in arb_request(), tail in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut data = req.into_frame(9).to_bytes().to_vec();
            data.extend_from_slice(&tail);
            fuzz_decode(&data);
        }

        #[test]
        fn stream_split_anywhere_parses_the_same(reqs in prop::collection::vec(arb_request(), 1..8), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
            let mut stream = Vec::new();
            for (i, r) in reqs.iter().enumerate() {
                stream.extend_from_slice(&r.clone().into_frame(i as u64 + 1).to_bytes());
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(stream.len());
            points.sort_unstable();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for p in points {
                buf.extend_from_slice(&stream[last..p]);
                last = p;
                while let Some(f) = Frame::parse(&mut buf, &Limits::DEFAULT).unwrap() {
                    got.push(Request::from_frame(f).unwrap());
                }
            }
            prop_assert_eq!(got, reqs);
        }

        #[test]
        fn oversized_header_refused_from_header_alone(body_len in (1024u32 + 1).., meta_len in any::<u16>()) {
            let mut buf = BytesMut::new();
            Header { opcode: Opcode::PutChunk, flags: 0, meta_len, request_id: 1, body_len }.encode(&mut buf);
            let limits = Limits { max_meta: u16::MAX as usize, max_body: 1024 };
            let err = check(&buf, &limits).unwrap_err();
            let is_too_large = matches!(err, FrameError::TooLarge { part: "body", .. });
            prop_assert!(is_too_large);
        }
    }

    #[test]
    fn header_layout_is_as_documented() {
        let f = Request::Get {
            id: ChunkId::new(&b"ab"[..]).unwrap(),
            range: ByteRange::ALL,
        }
        .into_frame(0x0102030405060708);
        let b = f.to_bytes();
        assert_eq!(
            &b[..20],
            &[
                0x4D, 0x46, 0x01, 0x11, 0x00, 0x00, 0x00, 19, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0
            ]
        );
        assert_eq!(&b[20..23], &[2, b'a', b'b']);
        assert_eq!(&b[23..31], &[0; 8]);
        assert_eq!(&b[31..39], &[0xFF; 8]);
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let f = Request::Put {
            id: ChunkId::for_object(1, 2, 3),
            crc32c: 5,
            data: Bytes::from_static(b"hello"),
        }
        .into_frame(1);
        let b = f.to_bytes();
        for cut in 0..b.len() {
            assert_eq!(check(&b[..cut], &Limits::DEFAULT), Ok(None), "cut at {cut}");
        }
        assert!(check(&b, &Limits::DEFAULT).unwrap().is_some());
    }

    #[test]
    fn bad_headers_are_errors() {
        let good = Request::Stats.into_frame(1).to_bytes().to_vec();
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            check(&b, &Limits::DEFAULT),
            Err(FrameError::BadMagic(_))
        ));
        let mut b = good.clone();
        b[2] = 2;
        assert_eq!(
            check(&b, &Limits::DEFAULT),
            Err(FrameError::UnsupportedVersion(2))
        );
        let mut b = good.clone();
        b[3] = 0x99;
        assert_eq!(
            check(&b, &Limits::DEFAULT),
            Err(FrameError::UnknownOpcode(0x99))
        );
        let mut b = good.clone();
        b[4] = FLAG_ERROR;
        assert_eq!(
            check(&b, &Limits::DEFAULT),
            Err(FrameError::BadFlags(FLAG_ERROR))
        );
        let mut b = good;
        b[5] = 1;
        assert!(matches!(
            check(&b, &Limits::DEFAULT),
            Err(FrameError::BadFlags(_))
        ));
    }

    #[test]
    fn chunk_id_layout() {
        let id = ChunkId::for_object(0xAABB, 7, 3);
        assert_eq!(id.len(), 22);
        assert_eq!(id.object_parts(), Some((0xAABB, 7, 3)));
        assert!(ChunkId::for_object(1, 0, 9) < ChunkId::for_object(1, 1, 0));
        assert!(ChunkId::new(Bytes::new()).is_err());
        assert!(ChunkId::new(vec![0u8; 256]).is_err());
    }

    #[test]
    fn state_chain_and_view_check() {
        let id = ChunkId::for_object(1, 0, 0);
        let a = NodeState::EMPTY.advance(Mutation::Put, &id, 42, 10);
        let b = a.advance(Mutation::Delete, &id, 42, 10);
        assert_eq!((a.term, b.term), (1, 2));
        assert_ne!(a.hash, b.hash);
        assert_eq!(a, NodeState::EMPTY.advance(Mutation::Put, &id, 42, 10));
        assert_ne!(a, NodeState::EMPTY.advance(Mutation::Put, &id, 43, 10));
        assert_eq!(
            ViewCheck::compare(&NodeState::EMPTY, &NodeState::EMPTY),
            ViewCheck::Fresh
        );
        assert_eq!(ViewCheck::compare(&a, &NodeState::EMPTY), ViewCheck::Lost);
        assert_eq!(ViewCheck::compare(&a, &a), ViewCheck::Match);
        assert_eq!(ViewCheck::compare(&a, &b), ViewCheck::Diverged);
        assert_eq!(
            ViewCheck::compare(&NodeState::EMPTY, &a),
            ViewCheck::Diverged
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<NodeState>(&json).unwrap(), a);
    }

    #[test]
    fn byte_range_resolution() {
        assert_eq!(ByteRange::ALL.resolve(10), Some((0, 10)));
        assert_eq!(
            ByteRange {
                offset: 4,
                length: Some(3)
            }
            .resolve(10),
            Some((4, 7))
        );
        assert_eq!(
            ByteRange {
                offset: 4,
                length: Some(30)
            }
            .resolve(10),
            Some((4, 10))
        );
        assert_eq!(
            ByteRange {
                offset: 10,
                length: None
            }
            .resolve(10),
            Some((10, 10))
        );
        assert_eq!(
            ByteRange {
                offset: 11,
                length: None
            }
            .resolve(10),
            None
        );
        assert_eq!(
            ByteRange {
                offset: u64::MAX,
                length: Some(u64::MAX - 1)
            }
            .resolve(u64::MAX),
            Some((u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn list_count_is_not_trusted_for_allocation() {
        let mut m = BytesMut::new();
        m.put_u32(u32::MAX);
        m.put_u8(0);
        let f = Frame::new(Opcode::List, FLAG_RESPONSE, 1, m, Bytes::new());
        assert!(Response::from_frame(f).is_err());
    }
}
