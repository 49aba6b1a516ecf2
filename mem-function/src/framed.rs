//! Reading and writing [`wire`](crate::wire) frames on async byte streams.
//!
//! The reader keeps all of its state in the struct, so `read_frame` is cancel-safe (it can sit
//! in a `select!` or under a timeout). It never reserves buffer space for a frame before the
//! frame's header has passed [`wire::check`](crate::wire::check).
//!
//! **Allocation discipline** (the function's memory accounting relies on it): a chunk body
//! handed out by the reader never shares its allocation with other frames, so storing it pins
//! exactly its own bytes. Frames longer than [`OWN_ALLOCATION`] that are not complete when their
//! header arrives are received into a buffer of exactly their length (a 64 MiB chunk lands in
//! one 64 MiB allocation, nothing else in it); a body of [`OWN_ALLOCATION`] bytes or more that
//! arrived whole inside the shared read buffer is copied out; smaller frames share the read
//! buffer (the store copies small chunks it keeps, see [`crate::store::COPY_BELOW`]). A read
//! buffer left over-sized by a dropped large frame is given back once it is empty.
//!
//! With [`BodyAlloc::Mapped`] (the function's reader) a body of [`OWN_ALLOCATION`] bytes or
//! more is received straight into an anonymous memory mapping of its own instead of the heap:
//! it costs exactly its pages while stored, and when its last `Bytes` is dropped the pages go
//! back to the operating system at once, whatever the allocator would have done with a freed
//! heap block (glibc keeps freed blocks of this size resident: see `docs/operations.md`,
//! "Function memory").

use crate::wire::{Frame, FrameError, HEADER_LEN, Header, Limits};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Initial (and minimum refill) capacity of the read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Frames longer than this get an allocation of their own (see the module doc).
pub const OWN_ALLOCATION: usize = 64 * 1024;
/// An empty read buffer with more capacity than this is replaced by a fresh small one.
const MAX_IDLE_BUFFER: usize = 4 * READ_CHUNK;
/// Bodies up to this size are copied into the write batch; larger ones are written directly.
const INLINE_BODY: usize = 16 * 1024;

/// Where a [`FrameReader`] puts bodies of [`OWN_ALLOCATION`] bytes or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyAlloc {
    /// On the heap, in one allocation of exactly the frame's length (the gateway's reader).
    #[default]
    Heap,
    /// In an anonymous memory mapping of the body's length (rounded up to pages), unmapped
    /// when the last `Bytes` of the body is dropped (the function's reader: see the module doc).
    Mapped,
}

/// An anonymous, pre-faulted mapping of `len` bytes (`len` > 0); `None` if the kernel refuses
/// one (out of memory, or `vm.max_map_count` mappings already): the body then goes to the heap.
fn anon_map(len: usize) -> Option<memmap2::MmapMut> {
    match memmap2::MmapOptions::new().len(len).populate().map_anon() {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(len, error = %e, "no mapping for a chunk body; receiving it on the heap");
            None
        }
    }
}

/// Wrap a filled mapping as `Bytes`; the mapping is removed with the last reference.
fn mapped_bytes(map: memmap2::MmapMut) -> io::Result<Bytes> {
    Ok(Bytes::from_owner(map.make_read_only()?))
}

/// A body being received into its mapping, with the frame's header and meta.
#[derive(Debug)]
struct MappedBody {
    header: Header,
    meta: Bytes,
    map: memmap2::MmapMut,
    filled: usize,
}

/// Errors of the framed stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid frame (or a frame over the limits).
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed mid-frame")]
    Truncated,
}

/// Outcome of [`FrameReader::read_frame_admit`].
#[derive(Debug)]
pub enum Incoming {
    /// A whole frame.
    Frame(Frame),
    /// A frame the admission check refused: its bytes were read and discarded unbuffered.
    Skipped(Header),
}

/// Reads frames from `R` with the given limits.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    limits: Limits,
    /// Bytes of a refused frame still to be discarded, and its header.
    skipping: Option<(usize, Header)>,
    /// `buf` is an exact-size allocation for the frame at its start.
    own: bool,
    /// `admit` accepted the (incomplete) frame at the start of `buf`.
    admitted: bool,
    /// Where large bodies go.
    bodies: BodyAlloc,
    /// A large body being received into its own mapping (its header and meta are no longer in
    /// `buf`).
    mapped: Option<MappedBody>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wrap a stream.
    pub fn new(io: R, limits: Limits) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            limits,
            skipping: None,
            own: false,
            admitted: false,
            bodies: BodyAlloc::Heap,
            mapped: None,
        }
    }

    /// Receive large bodies into `bodies` from the next frame on.
    pub fn set_body_alloc(&mut self, bodies: BodyAlloc) {
        self.bodies = bodies;
    }

    /// Change the limits (e.g. after authentication).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Current limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        match self.read_frame_admit(|_| true).await? {
            Some(Incoming::Frame(f)) => Ok(Some(f)),
            Some(Incoming::Skipped(_)) => unreachable!("admit accepts everything"),
            None => Ok(None),
        }
    }

    /// Next frame, asking `admit` (once per frame, as soon as its header is in and only if the
    /// frame is not already whole in the buffer) whether to buffer it. A refused frame
    /// is consumed from the stream without being buffered and reported as
    /// [`Incoming::Skipped`] (the function uses this to answer FULL to a put that cannot fit
    /// without first receiving the chunk into memory).
    pub async fn read_frame_admit(
        &mut self,
        mut admit: impl FnMut(&Header) -> bool,
    ) -> Result<Option<Incoming>, ReadError> {
        loop {
            if let Some(m) = &mut self.mapped {
                if m.filled < m.map.len() {
                    // Straight from the socket into the mapping (cancel-safe: a read either
                    // happened and is counted, or did not happen).
                    let n = self.io.read(&mut m.map[m.filled..]).await?;
                    if n == 0 {
                        return Err(ReadError::Truncated);
                    }
                    m.filled += n;
                    continue;
                }
                let Some(m) = self.mapped.take() else {
                    unreachable!("checked above")
                };
                self.admitted = false;
                return Ok(Some(Incoming::Frame(Frame {
                    opcode: m.header.opcode,
                    flags: m.header.flags,
                    request_id: m.header.request_id,
                    meta: m.meta,
                    body: mapped_bytes(m.map)?,
                })));
            }
            if let Some((left, header)) = self.skipping {
                let n = left.min(self.buf.len());
                self.buf.advance(n);
                let left = left - n;
                if left == 0 {
                    self.skipping = None;
                    return Ok(Some(Incoming::Skipped(header)));
                }
                self.skipping = Some((left, header));
                self.buf.reserve(READ_CHUNK.min(left));
                if self.io.read_buf(&mut self.buf).await? == 0 {
                    return Err(ReadError::Truncated);
                }
                continue;
            }
            if let Some(header) = Header::decode(&self.buf)? {
                header.check_limits(&self.limits)?;
                let need = header.frame_len();
                if self.buf.len() < need && !self.admitted {
                    if !admit(&header) {
                        self.skipping = Some((need, header));
                        continue;
                    }
                    self.admitted = true;
                }
                if let Some(mut frame) = Frame::parse(&mut self.buf, &self.limits)? {
                    self.admitted = false;
                    if std::mem::take(&mut self.own) {
                        // The frame took the whole exact-size buffer (reads stopped at its
                        // end, so nothing else is in it); start a fresh one.
                        debug_assert!(self.buf.is_empty());
                        self.buf = BytesMut::new();
                    } else if frame.body.len() >= OWN_ALLOCATION {
                        // Arrived whole inside the shared buffer: do not let it pin the rest.
                        frame.body = match self.bodies {
                            BodyAlloc::Heap => Bytes::copy_from_slice(&frame.body),
                            BodyAlloc::Mapped => match anon_map(frame.body.len()) {
                                Some(mut map) => {
                                    map.copy_from_slice(&frame.body);
                                    mapped_bytes(map)?
                                }
                                None => Bytes::copy_from_slice(&frame.body),
                            },
                        };
                    }
                    return Ok(Some(Incoming::Frame(frame)));
                }
                let head = HEADER_LEN + header.meta_len as usize;
                let map_body = self.bodies == BodyAlloc::Mapped
                    && !self.own
                    && header.body_len as usize >= OWN_ALLOCATION;
                let map = if map_body && self.buf.len() >= head {
                    anon_map(header.body_len as usize)
                } else {
                    None
                };
                if let Some(mut map) = map {
                    // Everything buffered belongs to this frame (it is not whole yet): the meta
                    // stays in the read buffer, the body goes to a mapping of its own.
                    let mut part = self.buf.split().freeze();
                    let meta = part.slice(HEADER_LEN..head);
                    part.advance(head);
                    map[..part.len()].copy_from_slice(&part);
                    self.mapped = Some(MappedBody {
                        header,
                        meta,
                        map,
                        filled: part.len(),
                    });
                    continue;
                }
                if map_body && self.buf.len() < head {
                    // Read on until the meta is in; the body will not be buffered here.
                    let missing = head - self.buf.len();
                    if self.buf.capacity() - self.buf.len() < missing {
                        self.buf.reserve(missing);
                    }
                } else if need > OWN_ALLOCATION && !self.own {
                    // Everything buffered belongs to this frame: move it into a buffer of
                    // exactly the frame's length, so reads stop at the frame's end. (Also where
                    // a body goes that should have been mapped when no mapping could be had.)
                    let mut own = BytesMut::with_capacity(need);
                    own.extend_from_slice(&self.buf);
                    self.buf = own;
                    self.own = true;
                } else {
                    // Whole frame not here yet: make room for exactly the rest of it.
                    let missing = need - self.buf.len();
                    if self.buf.capacity() - self.buf.len() < missing {
                        self.buf.reserve(missing);
                    }
                }
            } else {
                if self.buf.is_empty() && self.buf.capacity() > MAX_IDLE_BUFFER {
                    // Left over-sized by a large frame that was since dropped: give it back.
                    self.buf = BytesMut::new();
                }
                if self.buf.capacity() - self.buf.len() < HEADER_LEN {
                    self.buf.reserve(READ_CHUNK);
                }
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }

    /// Bytes buffered but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.mapped.as_ref().map_or(0, |m| m.filled)
    }

    /// The stream.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// Give back the stream.
    pub fn into_inner(self) -> R {
        self.io
    }
}

/// Write one frame (header and meta, then the body without copying it) and flush.
pub async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, frame: &Frame) -> io::Result<()> {
    let mut head = BytesMut::with_capacity(HEADER_LEN + frame.meta.len());
    frame.encode_head(&mut head);
    io.write_all(&head).await?;
    if !frame.body.is_empty() {
        io.write_all(&frame.body).await?;
    }
    io.flush().await
}

/// Batches frames: small ones are gathered into one buffer, large bodies are written as they
/// are. Call [`FrameBatch::push`] for each frame, then [`FrameBatch::flush`].
#[derive(Debug, Default)]
pub struct FrameBatch {
    out: BytesMut,
}

impl FrameBatch {
    /// Empty batch.
    pub fn new() -> Self {
        FrameBatch {
            out: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Add a frame; writes out whatever is pending first when the body is large.
    pub async fn push<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        frame: &Frame,
    ) -> io::Result<()> {
        frame.encode_head(&mut self.out);
        if frame.body.len() <= INLINE_BODY {
            self.out.extend_from_slice(&frame.body);
            if self.out.len() >= READ_CHUNK {
                io.write_all(&self.out).await?;
                self.out.clear();
            }
        } else {
            io.write_all(&self.out).await?;
            self.out.clear();
            io.write_all(&frame.body).await?;
        }
        Ok(())
    }

    /// Write out what is pending and flush the stream.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        if !self.out.is_empty() {
            io.write_all(&self.out).await?;
            self.out.clear();
        }
        io.flush().await
    }

    /// Write `first` and every frame already queued behind it in one batch, then flush: the
    /// body of both ends' writer tasks (many small responses or requests go out in one
    /// syscall, a large body is written straight from its buffer).
    pub async fn write_queued<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        first: &Frame,
        queue: &mut tokio::sync::mpsc::Receiver<Frame>,
    ) -> io::Result<()> {
        self.push(io, first).await?;
        while let Ok(more) = queue.try_recv() {
            self.push(io, &more).await?;
        }
        self.flush(io).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ChunkId, Opcode, Request};
    use bytes::Bytes;
    use std::time::Duration;

    #[tokio::test]
    async fn reads_frames_split_across_writes() {
        let (mut a, b) = tokio::io::duplex(64);
        let frames: Vec<Frame> = (1..=5u64)
            .map(|i| {
                Request::Put {
                    id: ChunkId::for_object(i as u128, 0, 0),
                    crc32c: 1,
                    data: Bytes::from(vec![i as u8; 1000]),
                }
                .into_frame(i)
            })
            .collect();
        let expected = frames.clone();
        let writer = tokio::spawn(async move {
            for f in &frames {
                write_frame(&mut a, f).await.unwrap();
            }
        });
        let mut r = FrameReader::new(b, Limits::DEFAULT);
        for f in expected {
            assert_eq!(r.read_frame().await.unwrap().unwrap(), f);
        }
        writer.await.unwrap();
        assert!(r.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_oversized_header_without_reserving() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut head = BytesMut::new();
        Header {
            opcode: Opcode::PutChunk,
            flags: 0,
            meta_len: 5,
            request_id: 1,
            body_len: u32::MAX,
        }
        .encode(&mut head);
        a.write_all(&head).await.unwrap();
        let mut r = FrameReader::new(b, Limits::DEFAULT);
        let err = r.read_frame().await.unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::Frame(FrameError::TooLarge { part: "body", .. })
            ),
            "{err}"
        );
        assert!(
            r.buf.capacity() <= READ_CHUNK,
            "buffer grew to {}",
            r.buf.capacity()
        );
    }

    #[tokio::test]
    async fn skipped_frames_are_discarded_and_the_stream_stays_in_sync() {
        let (mut a, b) = tokio::io::duplex(4096);
        let big = Request::Put {
            id: ChunkId::for_object(1, 0, 0),
            crc32c: 0,
            data: Bytes::from(vec![9u8; 300_000]),
        }
        .into_frame(1);
        let small = Request::Stats.into_frame(2);
        let w = tokio::spawn(async move {
            write_frame(&mut a, &big).await.unwrap();
            write_frame(&mut a, &small).await.unwrap();
        });
        let mut r = FrameReader::new(b, Limits::DEFAULT);
        match r
            .read_frame_admit(|h| h.body_len < 1000)
            .await
            .unwrap()
            .unwrap()
        {
            Incoming::Skipped(h) => assert_eq!(h.request_id, 1),
            other => panic!("{other:?}"),
        }
        assert!(r.buf.capacity() < 200_000);
        match r
            .read_frame_admit(|h| h.body_len < 1000)
            .await
            .unwrap()
            .unwrap()
        {
            Incoming::Frame(f) => assert_eq!(f.request_id, 2),
            other => panic!("{other:?}"),
        }
        w.await.unwrap();
    }

    fn big_then_small(body: usize) -> (Frame, Frame, Vec<u8>) {
        let big = Request::Put {
            id: ChunkId::for_object(1, 0, 0),
            crc32c: 0,
            data: Bytes::from(vec![7u8; body]),
        }
        .into_frame(1);
        let small = Request::Stat {
            id: ChunkId::for_object(2, 0, 0),
        }
        .into_frame(2);
        let mut wire = big.to_bytes().to_vec();
        wire.extend_from_slice(&small.to_bytes());
        (big, small, wire)
    }

    /// Would `next`'s meta sit right behind `prev`'s body in one allocation?
    fn adjacent(prev: &Frame, next: &Frame) -> bool {
        prev.body.as_ptr() as usize + prev.body.len() + HEADER_LEN == next.meta.as_ptr() as usize
    }

    #[tokio::test]
    async fn a_large_body_never_shares_its_allocation() {
        // Received piecewise: the big frame gets an exact-size buffer of its own.
        let (big, small, wire) = big_then_small(300_000);
        let (mut a, b) = tokio::io::duplex(8192);
        let w = tokio::spawn(async move { a.write_all(&wire).await.unwrap() });
        let mut r = FrameReader::new(b, Limits::DEFAULT);
        let got_big = r.read_frame().await.unwrap().unwrap();
        assert!(!r.own && r.buf.is_empty() && r.buf.capacity() == 0);
        let got_small = r.read_frame().await.unwrap().unwrap();
        assert_eq!((&got_big, &got_small), (&big, &small));
        assert!(!adjacent(&got_big, &got_small));
        w.await.unwrap();

        // Arrived whole inside a large shared buffer: the body is copied out.
        let (big, small, wire) = big_then_small(OWN_ALLOCATION);
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(&wire).await.unwrap();
        let mut r = FrameReader::new(b, Limits::DEFAULT);
        r.buf = BytesMut::with_capacity(1 << 20);
        let got_big = r.read_frame().await.unwrap().unwrap();
        let got_small = r.read_frame().await.unwrap().unwrap();
        assert_eq!((&got_big, &got_small), (&big, &small));
        assert!(!adjacent(&got_big, &got_small));

        // Small frames do share the read buffer (the store copies small chunks it keeps).
        let (small1, small2, wire) = big_then_small(1000);
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(&wire).await.unwrap();
        let mut r = FrameReader::new(b, Limits::DEFAULT);
        let got1 = r.read_frame().await.unwrap().unwrap();
        let got2 = r.read_frame().await.unwrap().unwrap();
        assert_eq!((&got1, &got2), (&small1, &small2));
        assert!(adjacent(&got1, &got2));
    }

    #[tokio::test]
    async fn mapped_bodies_arrive_whole_and_alone() {
        for (body, pipe, whole) in [
            (300_000, 8192, false),
            (OWN_ALLOCATION, 8192, false),
            (OWN_ALLOCATION + 1, 1 << 20, true),
            (2 << 20, 1000, false),
        ] {
            let (big, small, wire) = big_then_small(body);
            let (mut a, b) = tokio::io::duplex(pipe);
            let w = tokio::spawn(async move { a.write_all(&wire).await.unwrap() });
            let mut r = FrameReader::new(b, Limits::DEFAULT);
            r.set_body_alloc(BodyAlloc::Mapped);
            if whole {
                r.buf = BytesMut::with_capacity(4 << 20);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let got_big = r.read_frame().await.unwrap().unwrap();
            assert!(r.mapped.is_none());
            let got_small = r.read_frame().await.unwrap().unwrap();
            assert_eq!((&got_big, &got_small), (&big, &small), "body {body}");
            assert!(!adjacent(&got_big, &got_small));
            // The body is not in the read buffer at all.
            let buf = r.buf.as_ptr() as usize;
            let at = got_big.body.as_ptr() as usize;
            assert!(
                at + got_big.body.len() <= buf || at >= buf + r.buf.capacity(),
                "body {body} inside the read buffer"
            );
            w.await.unwrap();
        }
    }

    #[tokio::test]
    async fn admit_is_asked_once_per_frame_and_a_skip_keeps_the_stream_in_sync() {
        let (_, small, mut wire) = big_then_small(200_000);
        let (_, _, more) = big_then_small(150_000);
        wire.extend_from_slice(&more);
        let (mut a, b) = tokio::io::duplex(4096);
        let w = tokio::spawn(async move { a.write_all(&wire).await.unwrap() });
        let mut r = FrameReader::new(b, Limits::DEFAULT);
        let mut asked = 0;
        let first = r
            .read_frame_admit(|_| {
                asked += 1;
                true
            })
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(first, Incoming::Frame(f) if f.body.len() == 200_000));
        assert_eq!(asked, 1, "admit asked once for a frame read in many pieces");
        assert_eq!(r.read_frame().await.unwrap().unwrap(), small);
        match r.read_frame_admit(|_| false).await.unwrap().unwrap() {
            Incoming::Skipped(h) => assert_eq!(h.body_len, 150_000),
            Incoming::Frame(f) => panic!("{f:?}"),
        }
        assert_eq!(r.read_frame().await.unwrap().unwrap(), small);
        w.await.unwrap();
    }

    #[tokio::test]
    async fn truncated_stream_is_an_error() {
        let (mut a, b) = tokio::io::duplex(4096);
        let f = Request::Stats.into_frame(2).to_bytes();
        a.write_all(&f[..f.len() - 1]).await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b, Limits::DEFAULT);
        assert!(matches!(r.read_frame().await, Err(ReadError::Truncated)));
    }
}
