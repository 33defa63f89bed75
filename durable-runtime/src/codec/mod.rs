//! The serde codec that turns workflow inputs, step outputs and workflow outputs into
//! journal bytes and back.
//!
//! Everything the runtime stores goes through [`Codec`]; the default is [`Bincode`]
//! (bincode's 2.0 line with its serde support). The codec's [`name`](Codec::name) is
//! recorded in the journal when it is created, and a journal written by another codec is
//! refused at open rather than misread.
//!
//! Decoding is bounded, so a corrupt or hostile row is an error, never a huge
//! allocation. For a row of `n` bytes:
//!
//! - strings and byte buffers are decoded under a byte limit (the smallest power of four,
//!   at least 1 KiB, that is `>= n`): a length prefix claiming more is refused before
//!   anything is allocated for it;
//! - sequences and maps reserve room for at most `n` elements up front (no valid row of
//!   `n` bytes holds more), and fail as soon as the row runs out.
//!
//! So what decoding reserves is bounded by what a valid row of the same size could need.

use std::cell::Cell;

use serde::Serialize;
use serde::de::DeserializeOwned;

mod bounded;

/// The largest value the journal stores: 1 GiB, SQLite's own default maximum for a
/// `BLOB`. Encoding something larger is an error, not a journal row SQLite refuses later.
pub const MAX_VALUE_BYTES: usize = 1 << 30;

/// Turns serde values into journal bytes and back.
///
/// The runtime currently always uses [`Bincode`]; the trait marks the seam where another
/// codec plugs in, and the name it reports is what the journal records.
pub trait Codec: Send + Sync + 'static {
    /// A stable name recorded in the journal, for example `bincode-2/serde/standard`.
    fn name(&self) -> &'static str;

    /// Encodes `value`, failing if it does not serialize or exceeds [`MAX_VALUE_BYTES`].
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, CodecError>;

    /// Decodes a whole row: trailing bytes are an error, and so is any length prefix
    /// that claims more bytes than the row could hold.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: String,
}

impl CodecError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        CodecError {
            message: message.into(),
        }
    }
}

/// bincode 2 with serde, standard configuration (little endian, variable-length
/// integers), bounded decoding. The default codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

const CONFIG: bincode::config::Configuration = bincode::config::standard();

/// A bincode reader over a slice that reports how far it got through a shared cell, so
/// trailing bytes can be detected after the serde decoder has consumed it.
struct SliceReader<'a> {
    bytes: &'a [u8],
    position: &'a Cell<usize>,
}

impl bincode::de::read::Reader for SliceReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> Result<(), bincode::error::DecodeError> {
        let start = self.position.get();
        let end = start.saturating_add(out.len());
        let Some(src) = self.bytes.get(start..end) else {
            return Err(bincode::error::DecodeError::UnexpectedEnd {
                additional: end - self.bytes.len(),
            });
        };
        out.copy_from_slice(src);
        self.position.set(end);
        Ok(())
    }
}

/// Decodes with a compile-time byte limit `N` (bincode's limit is a const generic) and
/// length hints capped at the row's size.
fn decode_limited<T: DeserializeOwned, const N: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    let position = Cell::new(0);
    let reader = SliceReader {
        bytes,
        position: &position,
    };
    let mut decoder =
        bincode::serde::OwnedSerdeDecoder::from_reader(reader, CONFIG.with_limit::<N>());
    let decoded = T::deserialize(bounded::Capped {
        inner: decoder.as_deserializer(),
        cap: bytes.len(),
    });
    match decoded.map(|v| (v, position.get())) {
        Ok((value, used)) if used == bytes.len() => Ok(value),
        Ok((_, used)) => Err(CodecError::new(format!(
            "{} trailing bytes after the value ({used} of {} bytes used)",
            bytes.len() - used,
            bytes.len()
        ))),
        Err(bincode::error::DecodeError::LimitExceeded) => Err(CodecError::new(format!(
            "a length prefix claims more bytes than the {}-byte row holds",
            bytes.len()
        ))),
        Err(e) => Err(CodecError::new(e.to_string())),
    }
}

impl Codec for Bincode {
    fn name(&self) -> &'static str {
        "bincode-2/serde/standard"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let bytes = bincode::serde::encode_to_vec(value, CONFIG)
            .map_err(|e| CodecError::new(e.to_string()))?;
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(CodecError::new(format!(
                "encoded value is {} bytes, more than the journal's limit of {MAX_VALUE_BYTES}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        const K: usize = 1 << 10;
        match bytes.len() {
            n if n <= K => decode_limited::<T, K>(bytes),
            n if n <= 4 * K => decode_limited::<T, { 4 * K }>(bytes),
            n if n <= 16 * K => decode_limited::<T, { 16 * K }>(bytes),
            n if n <= 64 * K => decode_limited::<T, { 64 * K }>(bytes),
            n if n <= 256 * K => decode_limited::<T, { 256 * K }>(bytes),
            n if n <= K * K => decode_limited::<T, { K * K }>(bytes),
            n if n <= 4 * K * K => decode_limited::<T, { 4 * K * K }>(bytes),
            n if n <= 16 * K * K => decode_limited::<T, { 16 * K * K }>(bytes),
            n if n <= 64 * K * K => decode_limited::<T, { 64 * K * K }>(bytes),
            n if n <= 256 * K * K => decode_limited::<T, { 256 * K * K }>(bytes),
            n if n <= MAX_VALUE_BYTES => decode_limited::<T, MAX_VALUE_BYTES>(bytes),
            n => Err(CodecError::new(format!(
                "row is {n} bytes, more than the journal's limit of {MAX_VALUE_BYTES}"
            ))),
        }
    }
}

/// The codec the runtime uses.
pub(crate) const CODEC: Bincode = Bincode;

/// Serializes as a byte string (not a sequence of integers): how the journal nests one
/// encoded value (a message, an event) inside another (the step that received it).
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Decodes a byte string written by [`Bytes`].
#[derive(Debug)]
pub(crate) struct ByteBuf(pub(crate) Vec<u8>);

impl<'de> serde::Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Encodes `value` and decodes it back, returning the decoded copy with the bytes.
///
/// A type whose serde impls do not round-trip through the codec (bincode cannot
/// represent `#[serde(skip_serializing_if)]`, `flatten` or untagged enums) is caught
/// here, before it is recorded, instead of making a recorded run unreadable later. The
/// caller hands out the decoded copy, so a first run sees exactly what a replay will.
pub(crate) fn encode_checked<T: Serialize + DeserializeOwned>(
    value: &T,
) -> Result<(T, Vec<u8>), CodecError> {
    let bytes = CODEC.encode(value)?;
    match CODEC.decode::<T>(&bytes) {
        Ok(back) => Ok((back, bytes)),
        Err(e) => Err(CodecError::new(format!(
            "the value does not decode back from its own encoding ({e}); bincode cannot \
             represent `#[serde(skip_serializing_if)]`, `#[serde(flatten)]` or untagged enums"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_trailing_bytes() -> Result<(), CodecError> {
        let v = (String::from("sku-1"), 3u32, Some(vec![1u64, 2]));
        let mut bytes = CODEC.encode(&v)?;
        assert_eq!(CODEC.decode::<(String, u32, Option<Vec<u64>>)>(&bytes)?, v);
        bytes.push(0);
        let err = CODEC
            .decode::<(String, u32, Option<Vec<u64>>)>(&bytes)
            .expect_err("trailing bytes must be refused");
        assert!(err.to_string().contains("trailing"), "{err}");
        Ok(())
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // varint 251 = u64 follows; claim u64::MAX bytes for a String.
        let mut row = vec![253u8];
        row.extend_from_slice(&u64::MAX.to_le_bytes());
        let err = CODEC
            .decode::<String>(&row)
            .expect_err("hostile prefix must be refused");
        assert!(err.to_string().contains("length prefix"), "{err}");
    }
}
