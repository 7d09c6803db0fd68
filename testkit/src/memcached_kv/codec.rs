//! A small codec for memcached's text protocol: the requests the example sends (`get`,
//! `set`, `delete`, `version`, `flush_all`, with `noreply` where the protocol has it) and
//! every reply they can get. A `get` reply, its `VALUE` blocks up to `END`, is one frame.

use std::io;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The longest reply line (a `VALUE` header, an error message) the codec waits for; a
/// key is at most 250 bytes.
const MAX_LINE: usize = 2048;
/// The largest value the codec accepts in a `VALUE` block: memcached's own item size limit
/// can be raised (`-I`) up to 1 GiB, this client stops well before.
pub const MAX_DATA: usize = 64 * 1024 * 1024;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get <key>*`: one [`Response::Values`] with the keys found, in order.
    Get(Vec<Bytes>),
    /// `set <key> <flags> <exptime> <bytes> [noreply]`, then the value.
    Set {
        key: Bytes,
        flags: u32,
        exptime: u32,
        value: Bytes,
        noreply: bool,
    },
    /// `delete <key> [noreply]`.
    Delete { key: Bytes, noreply: bool },
    /// `version`: [`Response::Version`].
    Version,
    /// `flush_all`: [`Response::Ok`]; every item is invalidated.
    FlushAll,
}

/// One reply frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The `VALUE` blocks of a `get`, up to `END` (empty: nothing found).
    Values(Vec<Value>),
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Ok,
    /// `VERSION <version>`.
    Version(Bytes),
    /// `ERROR`: an unknown command.
    Error,
    /// `CLIENT_ERROR <message>`: the request was malformed.
    ClientError(Bytes),
    /// `SERVER_ERROR <message>`: e.g. `object too large for cache`, `out of memory storing
    /// object`.
    ServerError(Bytes),
}

/// One item of a `get` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub key: Bytes,
    pub flags: u32,
    pub data: Bytes,
}

/// What the codec fails with: the connection's I/O, or a reply it cannot parse.
#[derive(Debug)]
pub enum CodecError {
    Io(io::Error),
    /// Not memcached's text protocol, or not a reply to what was asked.
    Protocol(&'static str),
}

impl From<io::Error> for CodecError {
    fn from(err: io::Error) -> Self {
        CodecError::Io(err)
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Io(err) => write!(f, "I/O error: {err}"),
            CodecError::Protocol(why) => write!(f, "unexpected reply from memcached: {why}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// The text protocol codec. Keys must be valid memcached keys (see
/// [`valid_key`](super::valid_key)): a key with a space would be two keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemcacheCodec;

impl Encoder<Request> for MemcacheCodec {
    type Error = CodecError;

    fn encode(&mut self, req: Request, dst: &mut BytesMut) -> Result<(), CodecError> {
        let noreply = |dst: &mut BytesMut, yes: bool| {
            if yes {
                dst.extend_from_slice(b" noreply");
            }
        };
        match req {
            Request::Get(keys) => {
                dst.extend_from_slice(b"get");
                for key in keys {
                    dst.extend_from_slice(b" ");
                    dst.extend_from_slice(&key);
                }
            }
            Request::Set {
                key,
                flags,
                exptime,
                value,
                noreply: quiet,
            } => {
                dst.reserve(key.len() + value.len() + 64);
                dst.extend_from_slice(b"set ");
                dst.extend_from_slice(&key);
                dst.extend_from_slice(format!(" {flags} {exptime} {}", value.len()).as_bytes());
                noreply(dst, quiet);
                dst.extend_from_slice(b"\r\n");
                dst.extend_from_slice(&value);
            }
            Request::Delete {
                key,
                noreply: quiet,
            } => {
                dst.extend_from_slice(b"delete ");
                dst.extend_from_slice(&key);
                noreply(dst, quiet);
            }
            Request::Version => dst.extend_from_slice(b"version"),
            Request::FlushAll => dst.extend_from_slice(b"flush_all"),
        }
        dst.extend_from_slice(b"\r\n");
        Ok(())
    }
}

impl Decoder for MemcacheCodec {
    type Item = Response;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Response>, CodecError> {
        let Some(end) = line_end(src, 0)? else {
            return Ok(None);
        };
        let line = &src[..end];
        if line.starts_with(b"VALUE ") || line == b"END" {
            return decode_values(src);
        }
        let reply = match line {
            b"STORED" => Response::Stored,
            b"NOT_STORED" => Response::NotStored,
            b"EXISTS" => Response::Exists,
            b"NOT_FOUND" => Response::NotFound,
            b"DELETED" => Response::Deleted,
            b"OK" => Response::Ok,
            b"ERROR" => Response::Error,
            _ => {
                let text = |prefix: &[u8]| Bytes::copy_from_slice(&line[prefix.len()..]);
                if line.starts_with(b"VERSION ") {
                    Response::Version(text(b"VERSION "))
                } else if line.starts_with(b"CLIENT_ERROR ") {
                    Response::ClientError(text(b"CLIENT_ERROR "))
                } else if line.starts_with(b"SERVER_ERROR ") {
                    Response::ServerError(text(b"SERVER_ERROR "))
                } else {
                    return Err(CodecError::Protocol("unknown reply line"));
                }
            }
        };
        src.advance(end + 2);
        Ok(Some(reply))
    }
}

/// The `VALUE` blocks of a `get` reply and its `END`, once all of it is buffered.
fn decode_values(src: &mut BytesMut) -> Result<Option<Response>, CodecError> {
    let mut items: Vec<(Range<usize>, u32, Range<usize>)> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(end) = line_end(src, pos)? else {
            return Ok(None);
        };
        let line = &src[pos..end];
        if line == b"END" {
            pos = end + 2;
            break;
        }
        let (key, flags, len) = value_header(line)?;
        let key = pos + key.start..pos + key.end;
        let data = end + 2..end + 2 + len;
        let block_end = data.end + 2;
        if src.len() < block_end {
            // Make room for the rest of the value at once, not 8 KiB at a time.
            src.reserve(block_end - src.len());
            return Ok(None);
        }
        if &src[data.end..block_end] != b"\r\n" {
            return Err(CodecError::Protocol("a value not followed by CRLF"));
        }
        items.push((key, flags, data));
        pos = block_end;
    }
    let frame = src.split_to(pos).freeze();
    let values = items
        .into_iter()
        .map(|(key, flags, data)| Value {
            key: frame.slice(key),
            flags,
            data: frame.slice(data),
        })
        .collect();
    Ok(Some(Response::Values(values)))
}

/// `VALUE <key> <flags> <bytes> [<cas>]`: the key's range in the line, the flags, the length.
fn value_header(line: &[u8]) -> Result<(Range<usize>, u32, usize), CodecError> {
    let bad = CodecError::Protocol("a malformed VALUE line");
    let rest = line
        .strip_prefix(b"VALUE ")
        .ok_or(CodecError::Protocol("not a VALUE line"))?;
    let mut fields = rest.split(|&b| b == b' ');
    let key = fields.next().filter(|k| !k.is_empty()).ok_or(bad)?;
    let number =
        |field: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(field?).ok()?.parse().ok() };
    let flags = number(fields.next()).and_then(|f| u32::try_from(f).ok());
    let len = number(fields.next()).and_then(|l| usize::try_from(l).ok());
    let (Some(flags), Some(len)) = (flags, len) else {
        return Err(CodecError::Protocol("a malformed VALUE line"));
    };
    if len > MAX_DATA {
        return Err(CodecError::Protocol(
            "a value larger than this client takes",
        ));
    }
    let start = b"VALUE ".len();
    Ok((start..start + key.len(), flags, len))
}

/// Where the line starting at `from` ends (the index of its `\r`), if it is all buffered.
fn line_end(src: &BytesMut, from: usize) -> Result<Option<usize>, CodecError> {
    let window = &src[from..src.len().min(from + MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(from + i)),
        None if window.len() >= MAX_LINE + 2 => Err(CodecError::Protocol("a reply line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> (Vec<Response>, usize) {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(r) = MemcacheCodec.decode(&mut buf).expect("decodes") {
            out.push(r);
        }
        (out, buf.len())
    }

    #[test]
    fn a_get_reply_is_one_frame_and_waits_for_its_end() {
        let reply = b"VALUE a 5 3\r\n\r\n\x00\r\nVALUE b 0 0\r\n\r\nEND\r\nSTORED\r\n";
        for cut in 0..reply.len() {
            let (frames, _) = decode_all(&reply[..cut]);
            assert!(frames.len() <= 1, "cut at {cut}: {frames:?}");
        }
        let (frames, left) = decode_all(reply);
        assert_eq!(left, 0);
        assert_eq!(
            frames,
            [
                Response::Values(vec![
                    Value {
                        key: Bytes::from_static(b"a"),
                        flags: 5,
                        data: Bytes::from_static(b"\r\n\x00"),
                    },
                    Value {
                        key: Bytes::from_static(b"b"),
                        flags: 0,
                        data: Bytes::new(),
                    },
                ]),
                Response::Stored,
            ]
        );
        assert_eq!(decode_all(b"END\r\n").0, [Response::Values(vec![])]);
    }

    #[test]
    fn other_replies_and_errors() {
        let (frames, left) = decode_all(
            b"VERSION 1.6.18\r\nSERVER_ERROR object too large for cache\r\nNOT_FOUND\r\nDELE",
        );
        assert_eq!(
            frames,
            [
                Response::Version(Bytes::from_static(b"1.6.18")),
                Response::ServerError(Bytes::from_static(b"object too large for cache")),
                Response::NotFound,
            ]
        );
        assert_eq!(left, 4, "a partial line stays buffered");
        let mut buf = BytesMut::from(&b"HELLO\r\n"[..]);
        assert!(MemcacheCodec.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"VALUE k 0 3\r\nabcXY"[..]);
        assert!(MemcacheCodec.decode(&mut buf).is_err());
    }

    #[test]
    fn requests_on_the_wire() {
        let mut buf = BytesMut::new();
        let mut codec = MemcacheCodec;
        for req in [
            Request::Get(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
            Request::Set {
                key: Bytes::from_static(b"k"),
                flags: 0,
                exptime: 0,
                value: Bytes::from_static(b"v\r\n"),
                noreply: false,
            },
            Request::Delete {
                key: Bytes::from_static(b"k"),
                noreply: true,
            },
            Request::Version,
            Request::FlushAll,
        ] {
            codec.encode(req, &mut buf).expect("encodes");
        }
        assert_eq!(
            &buf[..],
            &b"get a b\r\nset k 0 0 3\r\nv\r\n\r\ndelete k noreply\r\nversion\r\nflush_all\r\n"[..]
        );
    }
}
