//! bincode 2 (standard configuration: little endian, variable-length integers) through
//! its serde support: the smallest encoding, and the one journals used before values
//! carried their format.
//!
//! bincode is not self-describing: the bytes of `7u32` read as an `i32` are `-4`. So
//! values written now carry a shape fingerprint beside them ([`super::fingerprint`]),
//! and a read whose decoded value has another shape is refused. Rows written before
//! (format [`super::Format::LegacyBincode`]) have none and are read as they are.
//!
//! Decoding borrows from the row: a length prefix is checked against the bytes left
//! before anything is read (strings and byte buffers are read as borrowed slices, never
//! into a buffer of the claimed size), and [`super::bounded::Capped`] keeps sequences
//! and maps from reserving room for more elements than the row has bytes. No bincode
//! byte limit is set: bincode counts decoded sizes against it (8 bytes per `u64` of a
//! sequence), which refused ordinary rows whose integers were stored in one byte each.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::bounded::Capped;

const CONFIG: bincode::config::Configuration = bincode::config::standard();

/// Why bincode could not write or read a value.
#[derive(Debug)]
pub(super) struct Error {
    pub(super) message: String,
}

pub(super) fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    bincode::serde::encode_into_std_write(value, out, CONFIG)
        .map(drop)
        .map_err(|e| Error {
            message: encode_message(&e),
        })
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let seed = CappedSeed::<T> {
        cap: bytes.len(),
        _t: std::marker::PhantomData,
    };
    let (value, used) =
        bincode::serde::seed_decode_from_slice(seed, bytes, CONFIG).map_err(|e| Error {
            message: decode_message(&e, bytes.len()),
        })?;
    if used != bytes.len() {
        return Err(Error {
            message: format!(
                "{} bytes follow the value ({used} of {} bytes read)",
                bytes.len() - used,
                bytes.len()
            ),
        });
    }
    Ok(value)
}

/// Decodes a `T` through [`Capped`].
struct CappedSeed<T> {
    cap: usize,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<'de, T: DeserializeOwned> serde::de::DeserializeSeed<'de> for CappedSeed<T> {
    type Value = T;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(Capped {
            inner: d,
            cap: self.cap,
        })
    }
}

fn encode_message(e: &bincode::error::EncodeError) -> String {
    use bincode::error::EncodeError as E;
    match e {
        E::OtherString(s) => s.clone(),
        E::Other(s) => (*s).to_owned(),
        E::Serde(bincode::serde::EncodeError::SequenceMustHaveLength) => {
            "a sequence or map serialized without a length up front (`#[serde(flatten)]` or a \
             custom `Serialize`), which bincode cannot write; use the default codec"
                .to_owned()
        }
        other => format!("bincode cannot write the value ({other})"),
    }
}

fn decode_message(e: &bincode::error::DecodeError, len: usize) -> String {
    use bincode::error::DecodeError as E;
    match e {
        E::UnexpectedEnd { additional } => format!(
            "the value ends early: {additional} more bytes were expected after the {len}-byte row"
        ),
        E::OtherString(s) => s.clone(),
        E::Other(s) => (*s).to_owned(),
        E::InvalidIntegerType { .. } => {
            "an integer is stored with another width or signedness than the type reads".to_owned()
        }
        E::NonZeroTypeIsZero { .. } => "zero where a non-zero integer was expected".to_owned(),
        E::ArrayLengthMismatch { required, found } => {
            format!("an array of {found} elements where the type holds {required}")
        }
        E::EmptyEnum { type_name } => format!("`{type_name}` has no variants to read"),
        E::InvalidDuration { .. } => "a duration out of range".to_owned(),
        E::InvalidSystemTime { .. } => "a system time out of range".to_owned(),
        E::CStringNulError { position } => format!("a C string with a NUL at byte {position}"),
        E::UnexpectedVariant {
            type_name,
            allowed: _,
            found,
        } => format!("variant {found} of `{type_name}` does not exist"),
        E::InvalidCharEncoding(_) => "a character that is not UTF-8".to_owned(),
        E::InvalidBooleanValue(b) => format!("{b} is not a boolean"),
        E::Utf8 { .. } => "a string is not UTF-8".to_owned(),
        E::OutsideUsizeRange(n) => format!("a length of {n} does not fit this machine's usize"),
        E::LimitExceeded => "a length is more than the row holds".to_owned(),
        E::Serde(bincode::serde::DecodeError::AnyNotSupported) => {
            "the type needs a self-describing format to be read (`#[serde(flatten)]`, an \
             untagged enum, a `serde_json::Value`), which bincode is not; use the default codec"
                .to_owned()
        }
        _ => "bincode cannot read the value as this type".to_owned(),
    }
}
