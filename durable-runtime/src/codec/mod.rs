//! How recorded values (workflow inputs and outputs, step outputs, messages, events)
//! become journal bytes and back.
//!
//! Every recorded value starts with one byte that names its format, so a journal can
//! hold values of several formats and each is read the way it was written:
//!
//! | first byte | format |
//! |---|---|
//! | `0x01` | bincode 2 without a guard: values written before the journal recorded formats (schema 3 and older) |
//! | `0x02` | CBOR with field and variant names ([`Codec::Cbor`], the default) |
//! | `0x03` | bincode 2, after an 8-byte shape fingerprint ([`Codec::Bincode`]) |
//!
//! Reading never returns a value different from the one recorded: a CBOR value follows
//! serde's rules for evolving types (fields and variants by name, integers by value),
//! and anything those rules cannot follow is an error; a bincode value is checked
//! against the shape fingerprint recorded with it. Decoding is bounded by the row: a
//! damaged or hostile row is an error, never a panic, a hang or a huge allocation.

use std::borrow::Cow;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The seven `Serialize*` trait impls of a serializer's compound, forwarded to its
/// inherent `element`, `field`, `key`, `value` and `finish`: sequences, tuples and
/// tuple structs and variants are lists of elements, structs and struct variants lists
/// of named fields.
macro_rules! serialize_compound {
    ($ty:ty, $err:ty) => {
        serialize_compound!($ty, $err, ());
    };
    ($ty:ty, $err:ty, $ok:ty) => {
        impl ser::SerializeSeq for $ty {
            type Ok = $ok;
            type Error = $err;
            fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), $err> {
                self.element(v)
            }
            fn end(self) -> Result<$ok, $err> {
                self.finish()
            }
        }
        impl ser::SerializeTuple for $ty {
            type Ok = $ok;
            type Error = $err;
            fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), $err> {
                self.element(v)
            }
            fn end(self) -> Result<$ok, $err> {
                self.finish()
            }
        }
        impl ser::SerializeTupleStruct for $ty {
            type Ok = $ok;
            type Error = $err;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), $err> {
                self.element(v)
            }
            fn end(self) -> Result<$ok, $err> {
                self.finish()
            }
        }
        impl ser::SerializeTupleVariant for $ty {
            type Ok = $ok;
            type Error = $err;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), $err> {
                self.element(v)
            }
            fn end(self) -> Result<$ok, $err> {
                self.finish()
            }
        }
        impl ser::SerializeMap for $ty {
            type Ok = $ok;
            type Error = $err;
            fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), $err> {
                self.key(k)
            }
            fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), $err> {
                self.value(v)
            }
            fn end(self) -> Result<$ok, $err> {
                self.finish()
            }
        }
        impl ser::SerializeStruct for $ty {
            type Ok = $ok;
            type Error = $err;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                v: &T,
            ) -> Result<(), $err> {
                self.field(name, v)
            }
            fn end(self) -> Result<$ok, $err> {
                self.finish()
            }
        }
        impl ser::SerializeStructVariant for $ty {
            type Ok = $ok;
            type Error = $err;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                v: &T,
            ) -> Result<(), $err> {
                self.field(name, v)
            }
            fn end(self) -> Result<$ok, $err> {
                self.finish()
            }
        }
    };
}

mod bincode;
mod bounded;
mod cbor;
pub(crate) mod fingerprint;

pub use fingerprint::Fingerprint;

/// The largest value the journal stores: 1 GiB, SQLite's own default maximum for a
/// `BLOB`. Encoding something larger is an error, not a journal row SQLite refuses later.
pub const MAX_VALUE_BYTES: usize = 1 << 30;

/// How a runtime encodes the values it records; choose it with
/// [`RuntimeBuilder::codec`](crate::RuntimeBuilder::codec).
///
/// Each recorded value says which codec wrote it, so the choice can change between
/// runs of the same journal: values are always read with the codec that wrote them.
///
/// | | [`Cbor`](Codec::Cbor) (default) | [`Bincode`](Codec::Bincode) |
/// |---|---|---|
/// | size | field and variant names are stored | the smallest: no names |
/// | a field added with `#[serde(default)]`, a field removed | resumes | refused |
/// | a variant added or moved | resumes | resumes if the recorded variant keeps its place, else refused |
/// | `u32` to `u64`, or to `i32` for values that fit | resumes | `u32` to `u64` resumes; signedness changes are refused |
/// | `#[serde(flatten)]`, `skip_serializing_if`, untagged enums | recorded | refused when recorded |
/// | a change that cannot keep the value (a number that became a string, a recorded variant removed, a value out of the new range) | an error naming the step, the type and the place in the value | an error naming the step and the type |
///
/// Neither ever returns a different value than the one recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// CBOR (RFC 8949) with field and variant names: a recorded value keeps its meaning
    /// when the type evolves the way serde allows. The journal documentation lists how
    /// each serde type is written.
    #[default]
    Cbor,
    /// bincode 2 (standard configuration): the smallest encoding, with no names. A
    /// fingerprint of each value's shape is recorded beside it and checked on every read,
    /// so a changed type is refused instead of decoded into a different value.
    Bincode,
}

/// The format byte at the start of every recorded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// bincode 2 with no guard (values from journals of schema 3 and older).
    LegacyBincode = 1,
    /// [`Codec::Cbor`].
    Cbor = 2,
    /// [`Codec::Bincode`]: 8 bytes of shape fingerprint (little endian), then bincode.
    Bincode = 3,
}

impl Format {
    pub(crate) fn of(bytes: &[u8]) -> Result<(Format, &[u8]), CodecError> {
        match bytes.split_first() {
            Some((1, body)) => Ok((Format::LegacyBincode, body)),
            Some((2, body)) => Ok((Format::Cbor, body)),
            Some((3, body)) => Ok((Format::Bincode, body)),
            Some((b, _)) => Err(CodecError::malformed(format!(
                "the value starts with format byte 0x{b:02x}, which this version of durable does \
                 not know (a newer version wrote it, or the row is damaged)"
            ))),
            None => Err(CodecError::malformed(
                "the value is empty: no format byte".to_owned(),
            )),
        }
    }
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    message: String,
    /// The bytes are not a valid encoding (damage, or not ours), rather than a valid
    /// value that does not fit the type asked for.
    malformed: bool,
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {}

impl CodecError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        CodecError {
            message: message.into(),
            malformed: false,
        }
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        CodecError {
            message: message.into(),
            malformed: true,
        }
    }

    /// Whether the bytes are not a valid encoding at all (a damaged row), as opposed to
    /// a valid value that does not fit the type it was read as (a changed type).
    pub fn is_malformed(&self) -> bool {
        self.malformed
    }
}

impl Codec {
    /// The codec's name, as the documentation and error messages use it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Cbor => "cbor",
            Codec::Bincode => "bincode",
        }
    }

    /// Encodes `value` as a journal value: its format byte, then the encoding.
    ///
    /// Values nest at most 128 arrays, maps and variants deep, and 256 newtypes and
    /// `Option`s deep. CBOR refuses a deeper value here; bincode writes it, and refuses
    /// it when it is read. (The runtime reads every value back before recording it, so
    /// it never records one it cannot read.)
    ///
    /// # Errors
    ///
    /// If the value's `Serialize` fails, the codec cannot represent it, or the result is
    /// larger than [`MAX_VALUE_BYTES`].
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(16);
        match self {
            Codec::Cbor => {
                out.push(Format::Cbor as u8);
                cbor::encode(value, &mut out).map_err(|e| CodecError::new(e.to_string()))?;
            }
            Codec::Bincode => {
                let shape = fingerprint::shape(value).map_err(|e| CodecError::new(e.0))?;
                out.push(Format::Bincode as u8);
                out.extend_from_slice(&shape.0.to_le_bytes());
                bincode::encode(value, &mut out).map_err(|e| CodecError::new(e.message))?;
            }
        }
        if out.len() > MAX_VALUE_BYTES {
            return Err(CodecError::new(format!(
                "the encoded value is {} bytes, more than the journal's limit of {MAX_VALUE_BYTES}",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Decodes a journal value written by any codec (its first byte says which) as `T`.
    ///
    /// `T` must be `Serialize` too (every type the journal records is): a bincode
    /// value's shape is checked against the fingerprint recorded with it.
    ///
    /// # Errors
    ///
    /// If the bytes are not a journal value, or the value does not fit `T`: the message
    /// says where in the value, and why.
    pub fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        if bytes.len() > MAX_VALUE_BYTES + 9 {
            return Err(CodecError::malformed(format!(
                "the row is {} bytes, more than the journal's limit of {MAX_VALUE_BYTES}",
                bytes.len()
            )));
        }
        let (format, body) = Format::of(bytes)?;
        match format {
            Format::Cbor => cbor::decode(body).map_err(|e| CodecError {
                message: e.to_string(),
                malformed: e.is_malformed(),
            }),
            Format::LegacyBincode => bincode_decode(body),
            Format::Bincode => {
                let Some((recorded, body)) = body.split_first_chunk::<8>() else {
                    return Err(CodecError::malformed(
                        "the value ends inside its shape fingerprint",
                    ));
                };
                let value: T = bincode_decode(body)?;
                let recorded = Fingerprint(u64::from_le_bytes(*recorded));
                let now = fingerprint::shape(&value).map_err(|e| CodecError::new(e.0))?;
                if now != recorded {
                    return Err(CodecError::new(format!(
                        "bincode recorded it with another shape (fingerprint {recorded}; the \
                         type now reads {now}), and bincode, which stores no names, cannot \
                         follow a changed field, variant order or integer signedness"
                    )));
                }
                Ok(value)
            }
        }
    }
}

fn bincode_decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    // bincode's bytes mean something only through the type that reads them: when a row
    // that passed its checksum does not read as `T`, the type changed (a bincode row
    // cannot tell damage from another type).
    bincode::decode(body).map_err(|e| CodecError::new(e.message))
}

/// `T`'s name without module paths: `Vec<Order>`, not `alloc::vec::Vec<shop::Order>`.
pub(crate) fn type_name<T: ?Sized>() -> String {
    short_type_name(std::any::type_name::<T>())
}

/// A type's full name without module paths.
pub(crate) fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
    out
}

/// Encodes `value` and decodes it back, returning the decoded copy with the bytes.
///
/// A type whose serde impls do not round-trip through the codec is caught here, before
/// it is recorded, instead of making a recorded run unreadable later. The caller hands
/// out the decoded copy, so a first run sees exactly what a replay will.
pub(crate) fn encode_checked<T: Serialize + DeserializeOwned>(
    codec: Codec,
    value: &T,
) -> Result<(T, Vec<u8>), CodecError> {
    let bytes = codec.encode(value)?;
    match Codec::decode::<T>(&bytes) {
        Ok(back) => Ok((back, bytes)),
        Err(e) => Err(CodecError::new(format!(
            "the value does not decode back from its own encoding ({e}){}",
            match codec {
                Codec::Bincode => {
                    "; bincode cannot represent `#[serde(skip_serializing_if)]`, \
                     `#[serde(flatten)]` or untagged enums: use the default codec"
                }
                Codec::Cbor => "; the type's `Serialize` and `Deserialize` disagree",
            }
        ))),
    }
}

/// A short, readable rendering of `value` (JSON-like, cut at about `limit` characters),
/// for error messages.
pub(crate) fn preview<T: Serialize + ?Sized>(value: &T, limit: usize) -> String {
    let mut bytes = Vec::new();
    match cbor::encode(value, &mut bytes) {
        Ok(()) => cbor::render(&bytes, limit),
        Err(_) => "?".to_owned(),
    }
}

/// A value nested inside another recorded value (a message inside the `recv` that took
/// it, a child's output inside its parent's record), made a journal value of its own.
/// Values recorded before formats were recorded nest untagged bincode; they get the
/// legacy format byte here.
pub(crate) fn nested<'a>(outer: &[u8], inner: &'a [u8]) -> Cow<'a, [u8]> {
    if outer.first() == Some(&(Format::LegacyBincode as u8)) {
        let mut tagged = Vec::with_capacity(inner.len() + 1);
        tagged.push(Format::LegacyBincode as u8);
        tagged.extend_from_slice(inner);
        Cow::Owned(tagged)
    } else {
        Cow::Borrowed(inner)
    }
}

/// A fingerprint of a recorded value's content that does not depend on its Rust type:
/// equal values give equal fingerprints (maps in any order). For CBOR values it is
/// computed from the decoded structure; for bincode values, which cannot be read
/// without their type, from their bytes.
pub(crate) fn content_fingerprint(bytes: &[u8]) -> Fingerprint {
    nested_content(bytes, 0).unwrap_or_else(|| {
        let mut h = fingerprint::Hash64::new();
        h.bytes(bytes);
        Fingerprint(h.finish())
    })
}

/// The content fingerprint of `bytes` if they are a whole CBOR journal value, read at
/// `level` values deep (a value nested by the runtime in another is one level down).
pub(crate) fn nested_content(bytes: &[u8], level: u32) -> Option<Fingerprint> {
    match Format::of(bytes) {
        Ok((Format::Cbor, body)) => cbor::decode_seed(ContentSeed(level), body).ok(),
        _ => None,
    }
}

struct ContentSeed(u32);

impl<'de> serde::de::DeserializeSeed<'de> for ContentSeed {
    type Value = Fingerprint;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Fingerprint, D::Error> {
        fingerprint::of_encoded(d, self.0)
    }
}

/// Serializes as a byte string (not a sequence of integers): how the journal nests one
/// encoded value (a message, an event) inside another (the step that received it).
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(cbor::NESTED, &Raw(self.0))
    }
}

/// The byte string itself, inside the newtype that marks it as nested.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
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

impl Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Bytes(&self.0).serialize(s)
    }
}
