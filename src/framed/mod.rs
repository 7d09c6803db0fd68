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
//! The state is kept on the connection itself after every operation, so
//! `framed.get_ref().discard_reason()` tells the verdict so far, and
//! [`into_connection`](PooledFramed::into_connection) hands a plain connection back.

mod expect;
mod into;
mod io;
mod pooled;

pub use into::IntoConnectionError;
pub use pooled::PooledFramed;
