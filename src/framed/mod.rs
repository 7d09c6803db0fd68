//! [`PooledFramed`]: a pooled connection read and written through a codec, with the
//! clean-connection rule extended to what only the codec knows.
//!
//! `TcpConnection` sees bytes. Through a codec, three things escape it: bytes the codec read
//! ahead and did not decode (they live in its buffer, not on the socket); a pipelined
//! exchange whose last reply has not arrived (a read came after the last write, so it looks
//! answered); and frames a protocol sends no reply to. A `PooledFramed` counts frames
//! instead: each request frame sent expects one reply frame (or as many as
//! [`expect_replies`](PooledFramed::expect_replies) says, 0 for none), each frame decoded
//! takes one off, and when it is dropped the connection goes back to the pool only if
//!
//! - the connection is clean by the [usual rule](crate::TcpConnection#the-clean-connection-rule)
//!   (no error, no cancellation, nothing unread on the socket),
//! - every reply frame expected was received (otherwise `ReplyNotRead`, even if no byte of
//!   them has arrived yet),
//! - the read buffer is empty (otherwise `UnreadBytes`: a frame decoded-but-unread, or part of
//!   one), and
//! - the codec never failed (otherwise `Codec`).
//!
//! The state is kept on the connection itself after every operation (`Tracker::count_frames`:
//! frames owed, bytes buffered), so the connection's own drop gives the verdict in the
//! usual order (a panic, then a mark, then a read or write in flight, then the frames), and
//! `framed.get_ref().discard_reason()` tells it so far. While frames are counted the tracker's
//! byte-level "written since the last read" is not used; a reply owed in bytes when the
//! connection is framed counts as one frame, and a frame owed when
//! [`into_connection`](PooledFramed::into_connection) hands a plain connection back counts
//! as a reply not read.
//!
//! Writes that need no reply (`expect_replies(0)`, a `write_only` pool, and
//! `TcpConnection::expect_no_reply` on a plain connection) owe nothing, but every write turns
//! off the return-time peek skip (`Tracker::drained_by_last_read`): bytes such a write
//! provoked (an error reply) are looked for when the connection comes back.

mod expect;
mod into;
mod io;
mod pooled;

pub use into::IntoConnectionError;
pub use pooled::PooledFramed;
