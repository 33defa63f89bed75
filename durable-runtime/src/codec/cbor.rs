//! The default value encoding: CBOR (RFC 8949) as a serde data format, with field and
//! variant names, so recorded values keep their meaning when types evolve.
//!
//! How serde's data model maps onto CBOR (the journal's documentation repeats this):
//!
//! | serde | CBOR |
//! |---|---|
//! | `bool` | `false` / `true` |
//! | integers of any width | major type 0 (zero or more) or 1 (negative), shortest form; beyond 64 bits, bignum tags 2 and 3 |
//! | `f32`, `f64` | single and double precision floats, bit for bit (NaN payloads kept) |
//! | `char`, `str` | text string |
//! | bytes | byte string |
//! | `None` | `null` |
//! | `Some(x)` | `x`, except that `Some` of an `Option` is tag 6 (ours) around it, so `Some(None)` stays `Some(None)` |
//! | `()`, unit struct | `undefined` |
//! | newtype struct | its inner value |
//! | a journal value the runtime nests in another | tag 7 (ours) around a byte string holding it |
//! | sequence, tuple, tuple struct | array |
//! | map | map, with keys of any type |
//! | struct | map from field names to values |
//! | unit variant | the variant's name, as text |
//! | other variants | a map of one entry: the variant's name to its content (a value, an array or a map) |
//!
//! Because structs and variants are written by name, decoding follows serde's usual
//! rules for evolving types: a field the type no longer has is skipped, a field the
//! record lacks takes its `#[serde(default)]` (or is an error naming it), a variant is
//! found by its name wherever it now sits in the enum, and integers decode into any
//! integer type the value fits. What cannot follow is an error, never a different value:
//! an integer that does not fit (`4_000_000_000` into an `i32`), a number where a string
//! is wanted, a variant that no longer exists, a float that would lose precision.
//!
//! Decoding is bounded by the row: every length is checked against the bytes left
//! before anything is read or allocated (strings and byte strings are borrowed from the
//! row), sequences and maps never reserve room for more elements than the row has bytes
//! left, and nesting is limited to [`MAX_DEPTH`] levels, so a hostile row is an error,
//! never a huge allocation, a hang or a stack overflow.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize, Serializer};

/// How deeply arrays, maps, variants and tagged items may nest, in a value being written
/// or read. Deep enough for any value a service records; shallow enough that a hostile
/// row cannot exhaust a thread's stack while it is decoded.
pub(crate) const MAX_DEPTH: u32 = 128;

/// How many newtype structs and untagged `Some`s may enclose an item, besides the
/// levels [`MAX_DEPTH`] counts. They read no bytes of their own, so without a limit a
/// two-byte row read as `struct Link(Option<Box<Link>>)` would recurse until the stack
/// ran out; counted apart, they do not make the usual recursive types (an AST whose
/// nodes are newtypes, a linked list) any shallower than serde's formats allow.
pub(crate) const MAX_HOLLOW: u32 = 256;

fn too_deep() -> String {
    format!("the value is nested more than {MAX_DEPTH} levels deep, more than the journal records")
}

fn too_hollow() -> String {
    format!(
        "the value is nested more than {MAX_HOLLOW} newtypes and `Option`s deep, more than the journal records"
    )
}

/// Tag 6 (unassigned in RFC 8949's registry): `Some` around a value that is itself an
/// `Option`, so `Some(None)` is not read back as `None`.
const SOME: u8 = 0xc6;
/// Tag 7 (unassigned too, ours): around a byte string that holds a journal value of its
/// own, nested by the runtime in another (a message in the `recv` that took it, a
/// child's output in its parent's record). Only what the runtime nests carries it, so a
/// reader can tell those apart from a user's bytes.
const NESTED_TAG: u8 = 0xc7;
/// The newtype name the runtime's nested byte strings are serialized under; this
/// encoder writes [`NESTED_TAG`] for it, other formats see a plain newtype.
pub(crate) const NESTED: &str = "\0durable::nested";
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;
const UNDEFINED: u8 = 0xf7;
const F32: u8 = 0xfa;
const F64: u8 = 0xfb;

const UINT: u8 = 0;
const NINT: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const TAG: u8 = 6;

/// Why a value could not be written or read, with where in the value it happened.
/// Boxed: every `Result` of the decoder carries one, and the common case is success.
#[derive(Debug)]
pub(crate) struct Error(Box<ErrorImpl>);

#[derive(Debug)]
struct ErrorImpl {
    message: String,
    /// Malformed bytes (not something our encoder writes), rather than a value that
    /// does not fit the type it is read as.
    malformed: bool,
    /// Where, innermost first: filled in while the error unwinds.
    path: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Index(usize),
    Field(String),
    Variant(String),
}

impl Error {
    fn new(message: String, malformed: bool) -> Self {
        Error(Box::new(ErrorImpl {
            message,
            malformed,
            path: Vec::new(),
        }))
    }

    fn malformed(message: impl Into<String>) -> Self {
        Error::new(message.into(), true)
    }

    /// Whether the bytes were not a valid encoding (rather than a value of another type).
    pub(crate) fn is_malformed(&self) -> bool {
        self.0.malformed
    }

    fn at(mut self, segment: Segment) -> Self {
        self.0.path.push(segment);
        self
    }

    /// Where in the value the error happened, such as `.items[2].qty`; empty at the top.
    pub(crate) fn location(&self) -> String {
        let mut s = String::new();
        for seg in self.0.path.iter().rev() {
            match seg {
                Segment::Index(i) => s.push_str(&format!("[{i}]")),
                Segment::Field(f) => {
                    s.push('.');
                    s.push_str(f);
                }
                Segment::Variant(v) => {
                    s.push_str("::");
                    s.push_str(v);
                }
            }
        }
        s
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        if !self.0.path.is_empty() {
            write!(f, " (at `{}`)", self.location())?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string(), false)
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string(), false)
    }
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// Appends the CBOR encoding of `value` to `out`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let mut enc = Encoder {
        out,
        some: false,
        depth: 0,
        hollow: 0,
    };
    value.serialize(&mut enc)
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[m | 24, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(m | 25);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(m | 26);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    /// A `Some` was begun and its content not written yet: if the content is itself an
    /// `Option` (a `None` or another `Some`), the `Some` must be written out as a tag.
    some: bool,
    /// Levels as the reader counts them (see [`MAX_DEPTH`] and [`MAX_HOLLOW`]).
    depth: u32,
    hollow: u32,
}

impl Encoder<'_> {
    /// Called before writing anything but an `Option`: settles a pending `Some`, which
    /// stays untagged.
    fn item(&mut self) {
        self.some = false;
    }

    /// Called before writing an `Option` (`None`, `Some`, or the `()` that `Some(())`
    /// holds): a pending `Some` around it is written as a tag, and so counts as a
    /// tagged level, not an untagged one (as the reader will count it).
    fn option_item(&mut self) -> Result<(), Error> {
        if std::mem::take(&mut self.some) {
            self.out.push(SOME);
            self.hollow -= 1;
            self.enter()?;
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ser::Error::custom(too_deep()));
        }
        Ok(())
    }

    fn enter_hollow(&mut self) -> Result<(), Error> {
        self.hollow += 1;
        if self.hollow > MAX_HOLLOW {
            return Err(ser::Error::custom(too_hollow()));
        }
        Ok(())
    }

    fn uint(&mut self, v: u128) {
        self.item();
        match u64::try_from(v) {
            Ok(v) => head(self.out, UINT, v),
            Err(_) => self.bignum(2, v),
        }
    }

    fn sint(&mut self, v: i128) {
        if v >= 0 {
            return self.uint(v as u128);
        }
        self.item();
        // CBOR stores a negative n as -1 - n.
        let n = (-1 - v) as u128;
        match u64::try_from(n) {
            Ok(n) => head(self.out, NINT, n),
            Err(_) => self.bignum(3, n),
        }
    }

    fn bignum(&mut self, tag: u64, n: u128) {
        head(self.out, TAG, tag);
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        head(self.out, BYTES, (16 - skip) as u64);
        self.out.extend_from_slice(&bytes[skip..]);
    }

    fn text(&mut self, s: &str) {
        head(self.out, TEXT, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// `{ "Variant": <content> }`: the one-entry map around a variant's content.
    fn variant(&mut self, name: &str) -> Result<(), Error> {
        self.item();
        self.enter()?;
        head(self.out, MAP, 1);
        self.text(name);
        Ok(())
    }
}

fn compound<'b, 'a>(
    enc: &'b mut Encoder<'a>,
    major: u8,
    len: Option<usize>,
) -> Result<Compound<'b, 'a>, Error> {
    enc.item();
    enc.enter()?;
    let at = enc.out.len();
    if let Some(n) = len {
        head(enc.out, major, n as u64);
    }
    let header_len = enc.out.len() - at;
    Ok(Compound {
        enc,
        header_at: at,
        header_len,
        declared: len,
        count: 0,
        major,
        wrapped: false,
    })
}

/// An array or map being written. Its header is written with the declared length and
/// fixed at the end if the count differs (serde's `flatten` gives no length up front).
struct Compound<'b, 'a> {
    enc: &'b mut Encoder<'a>,
    header_at: usize,
    header_len: usize,
    declared: Option<usize>,
    count: usize,
    major: u8,
    /// Inside a variant's one-entry map, which ends with it.
    wrapped: bool,
}

impl Compound<'_, '_> {
    fn finish(self) -> Result<(), Error> {
        if self.declared != Some(self.count) {
            let mut header = Vec::with_capacity(9);
            head(&mut header, self.major, self.count as u64);
            let range = self.header_at..self.header_at + self.header_len;
            self.enc.out.splice(range, header);
        }
        self.enc.depth -= 1;
        if self.wrapped {
            self.enc.depth -= 1;
        }
        Ok(())
    }
}

impl<'b, 'a> Serializer for &'b mut Encoder<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'b, 'a>;
    type SerializeTuple = Compound<'b, 'a>;
    type SerializeTupleStruct = Compound<'b, 'a>;
    type SerializeTupleVariant = Compound<'b, 'a>;
    type SerializeMap = Compound<'b, 'a>;
    type SerializeStruct = Compound<'b, 'a>;
    type SerializeStructVariant = Compound<'b, 'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.item();
        self.out.push(if v { TRUE } else { FALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.sint(v.into());
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.sint(v.into());
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.sint(v.into());
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.sint(v.into());
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.sint(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.uint(v.into());
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.uint(v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.uint(v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.uint(v.into());
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.uint(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.item();
        self.out.push(F32);
        self.out.extend_from_slice(&v.to_bits().to_be_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.item();
        self.out.push(F64);
        self.out.extend_from_slice(&v.to_bits().to_be_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.item();
        self.text(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.item();
        self.text(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.item();
        head(self.out, BYTES, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.option_item()?;
        self.out.push(NULL);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Error> {
        self.option_item()?;
        // Untagged unless what it holds is an `Option` (see `option_item`, which then
        // writes the tag where this `Some`'s content begins).
        self.enter_hollow()?;
        let at = self.out.len();
        self.some = true;
        v.serialize(&mut *self)?;
        self.some = false;
        if self.out.get(at) == Some(&SOME) {
            self.depth -= 1;
        } else {
            self.hollow -= 1;
        }
        Ok(())
    }
    fn serialize_unit(self) -> Result<(), Error> {
        // `Some(())` needs its tag too: serde's buffered reading (untagged enums,
        // `flatten`) turns a bare `undefined` into `None` when it wants an `Option`.
        self.option_item()?;
        self.out.push(UNDEFINED);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.item();
        self.text(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        if name == NESTED {
            self.item();
            self.out.push(NESTED_TAG);
        }
        // Counted as the reader counts it (see `MAX_HOLLOW`).
        self.enter_hollow()?;
        v.serialize(&mut *self)?;
        self.hollow -= 1;
        Ok(())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        self.variant(variant)?;
        v.serialize(&mut *self)?;
        self.depth -= 1;
        Ok(())
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'b, 'a>, Error> {
        compound(self, ARRAY, len)
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'b, 'a>, Error> {
        compound(self, ARRAY, Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Compound<'b, 'a>, Error> {
        compound(self, ARRAY, Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'b, 'a>, Error> {
        self.variant(variant)?;
        let mut c = compound(self, ARRAY, Some(len))?;
        c.wrapped = true;
        Ok(c)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'b, 'a>, Error> {
        compound(self, MAP, len)
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Compound<'b, 'a>, Error> {
        compound(self, MAP, Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'b, 'a>, Error> {
        self.variant(variant)?;
        let mut c = compound(self, MAP, Some(len))?;
        c.wrapped = true;
        Ok(c)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

impl Compound<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.count += 1;
        v.serialize(&mut *self.enc)
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &'static str, v: &T) -> Result<(), Error> {
        self.count += 1;
        self.enc.text(name);
        v.serialize(&mut *self.enc)
    }

    fn key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Error> {
        self.count += 1;
        k.serialize(&mut *self.enc)
    }

    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        v.serialize(&mut *self.enc)
    }
}

serialize_compound!(Compound<'_, '_>, Error);

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// Reads one value from the whole of `bytes` (trailing bytes are an error).
pub(crate) fn decode<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error> {
    decode_seed(std::marker::PhantomData, bytes)
}

/// [`decode`] with a seed.
pub(crate) fn decode_seed<'de, S: DeserializeSeed<'de>>(
    seed: S,
    bytes: &'de [u8],
) -> Result<S::Value, Error> {
    let mut d = Decoder {
        input: bytes,
        pos: 0,
        depth: 0,
        hollow: 0,
    };
    let value = seed.deserialize(&mut d)?;
    if d.pos != bytes.len() {
        return Err(Error::malformed(format!(
            "{} bytes follow the value ({} of {} bytes read)",
            bytes.len() - d.pos,
            d.pos,
            bytes.len()
        )));
    }
    Ok(value)
}

/// One item's initial byte, split.
#[derive(Clone, Copy)]
struct Head {
    major: u8,
    /// The low five bits.
    info: u8,
    /// The argument (a length, an integer, a tag number); for major type 7, the raw
    /// bits that follow.
    value: u64,
}

pub(crate) struct Decoder<'de> {
    input: &'de [u8],
    pos: usize,
    depth: u32,
    hollow: u32,
}

impl<'de> Decoder<'de> {
    fn left(&self) -> usize {
        self.input.len() - self.pos
    }

    fn ends_early(&self, needed: usize) -> Error {
        Error::malformed(format!(
            "the value ends early: {needed} more bytes were expected at byte {} of {}",
            self.pos,
            self.input.len()
        ))
    }

    #[inline]
    fn peek(&self) -> Result<u8, Error> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.ends_early(1))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], Error> {
        if n > self.left() {
            return Err(self.ends_early(n - self.left()));
        }
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn head(&mut self) -> Result<Head, Error> {
        let at = self.pos;
        let b = self.take(1)?[0];
        let (major, info) = (b >> 5, b & 0x1f);
        let value = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]])),
            26 => {
                let mut w = [0u8; 4];
                w.copy_from_slice(self.take(4)?);
                u64::from(u32::from_be_bytes(w))
            }
            27 => {
                let mut w = [0u8; 8];
                w.copy_from_slice(self.take(8)?);
                u64::from_be_bytes(w)
            }
            _ => {
                return Err(Error::malformed(format!(
                    "byte 0x{b:02x} at {at} starts no item durable writes (indefinite lengths \
                     and reserved forms are not used)"
                )));
            }
        };
        Ok(Head { major, info, value })
    }

    /// A length, checked against what is left: each of `len` items takes at least
    /// `min_size` bytes.
    #[inline]
    fn length(&self, len: u64, min_size: usize) -> Result<usize, Error> {
        let max = self.left() / min_size.max(1);
        match usize::try_from(len) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(Error::malformed(format!(
                "a length of {len} at byte {} is more than the {} bytes left can hold",
                self.pos,
                self.left()
            ))),
        }
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Error::malformed(too_deep()));
        }
        Ok(())
    }

    fn enter_hollow(&mut self) -> Result<(), Error> {
        self.hollow += 1;
        if self.hollow > MAX_HOLLOW {
            return Err(Error::malformed(too_hollow()));
        }
        Ok(())
    }

    #[inline]
    fn text(&mut self, len: u64) -> Result<&'de str, Error> {
        let n = self.length(len, 1)?;
        let at = self.pos;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map_err(|_| Error::malformed(format!("the text string at byte {at} is not UTF-8")))
    }

    /// A bignum's magnitude (tag 2 or 3 already read).
    fn bignum(&mut self) -> Result<u128, Error> {
        let h = self.head()?;
        if h.major != BYTES {
            return Err(Error::malformed(
                "a bignum tag is not followed by a byte string",
            ));
        }
        let n = self.length(h.value, 1)?;
        let bytes = self.take(n)?;
        let digits = &bytes[bytes.iter().take_while(|b| **b == 0).count()..];
        if digits.len() > 16 {
            return Err(de::Error::custom(format_args!(
                "the recorded integer has {} bytes, more than 128 bits",
                digits.len()
            )));
        }
        Ok(digits
            .iter()
            .fold(0u128, |acc, b| (acc << 8) | u128::from(*b)))
    }

    /// The float at the current position, if the next item is one, in its width.
    fn float(&mut self) -> Result<Option<Float>, Error> {
        match self.peek()? {
            F32 => {
                self.pos += 1;
                let mut w = [0u8; 4];
                w.copy_from_slice(self.take(4)?);
                Ok(Some(Float::F32(f32::from_bits(u32::from_be_bytes(w)))))
            }
            F64 => {
                self.pos += 1;
                let mut w = [0u8; 8];
                w.copy_from_slice(self.take(8)?);
                Ok(Some(Float::F64(f64::from_bits(u64::from_be_bytes(w)))))
            }
            _ => Ok(None),
        }
    }

    /// Reads past one item without building anything.
    fn skip(&mut self) -> Result<(), Error> {
        let h = self.head()?;
        match h.major {
            UINT | NINT => {}
            BYTES | TEXT => {
                let n = self.length(h.value, 1)?;
                self.take(n)?;
            }
            ARRAY | MAP => {
                let per = if h.major == MAP { 2 } else { 1 };
                let n = self.length(h.value, per)?;
                self.enter()?;
                for _ in 0..n * per {
                    self.skip()?;
                }
                self.depth -= 1;
            }
            TAG => {
                self.enter()?;
                self.skip()?;
                self.depth -= 1;
            }
            _ => self.simple(h).map(drop)?,
        }
        Ok(())
    }

    /// Checks a major-type-7 item (its head read) and says what it is.
    fn simple(&mut self, h: Head) -> Result<Simple, Error> {
        Ok(match h.info {
            20 => Simple::Bool(false),
            21 => Simple::Bool(true),
            22 => Simple::Null,
            23 => Simple::Undefined,
            26 => Simple::F32(f32::from_bits(h.value as u32)),
            27 => Simple::F64(f64::from_bits(h.value)),
            _ => {
                return Err(Error::malformed(format!(
                    "simple value {} (0x{:02x}) at byte {} is not one durable writes",
                    h.info,
                    0xe0 | h.info,
                    self.pos - 1
                )));
            }
        })
    }

    fn seq<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let mut access = Elements {
            de: self,
            left: len,
            index: 0,
        };
        let value = visitor.visit_seq(&mut access)?;
        if access.left > 0 {
            return Err(de::Error::custom(format_args!(
                "the recorded array has {len} elements, and the type reads only {}",
                len - access.left
            )));
        }
        self.depth -= 1;
        Ok(value)
    }

    fn map<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let mut access = Entries {
            de: self,
            left: len,
            index: 0,
            key_at: 0,
        };
        let value = visitor.visit_map(&mut access)?;
        if access.left > 0 {
            return Err(de::Error::custom(format_args!(
                "the recorded map has {len} entries, and the type reads only {}",
                len - access.left
            )));
        }
        self.depth -= 1;
        Ok(value)
    }
}

/// A float as written: an `f32` read back as an `f32` keeps every bit (a signalling
/// NaN's too, which a trip through `f64` would quiet).
enum Float {
    F32(f32),
    F64(f64),
}

enum Simple {
    Bool(bool),
    Null,
    Undefined,
    F32(f32),
    F64(f64),
}

impl<'de> Deserializer<'de> for &mut Decoder<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let h = self.head()?;
        match h.major {
            UINT => visitor.visit_u64(h.value),
            NINT => match i64::try_from(h.value) {
                Ok(n) => visitor.visit_i64(-1 - n),
                Err(_) => visitor.visit_i128(-1 - i128::from(h.value)),
            },
            BYTES => {
                let n = self.length(h.value, 1)?;
                visitor.visit_borrowed_bytes(self.take(n)?)
            }
            TEXT => visitor.visit_borrowed_str(self.text(h.value)?),
            ARRAY => {
                let n = self.length(h.value, 1)?;
                self.seq(n, visitor)
            }
            MAP => {
                let n = self.length(h.value, 2)?;
                self.map(n, visitor)
            }
            TAG => match h.value {
                2 => visitor.visit_u128(self.bignum()?),
                3 => {
                    let n = self.bignum()?;
                    match i128::try_from(n) {
                        Ok(n) => visitor.visit_i128(-1 - n),
                        Err(_) => Err(de::Error::custom(format_args!(
                            "the recorded integer -1 - {n} is below i128::MIN"
                        ))),
                    }
                }
                6 => {
                    self.enter()?;
                    let v = visitor.visit_some(&mut *self)?;
                    self.depth -= 1;
                    Ok(v)
                }
                7 => {
                    self.enter()?;
                    let v = visitor.visit_newtype_struct(&mut *self)?;
                    self.depth -= 1;
                    Ok(v)
                }
                t => Err(Error::malformed(format!(
                    "tag {t} at byte {} is not one durable writes",
                    self.pos
                ))),
            },
            _ => match self.simple(h)? {
                Simple::Bool(b) => visitor.visit_bool(b),
                Simple::Null => visitor.visit_none(),
                Simple::Undefined => visitor.visit_unit(),
                Simple::F32(f) => visitor.visit_f32(f),
                Simple::F64(f) => visitor.visit_f64(f),
            },
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? {
            NULL => {
                self.pos += 1;
                visitor.visit_none()
            }
            SOME => {
                self.pos += 1;
                self.enter()?;
                let v = visitor.visit_some(&mut *self)?;
                self.depth -= 1;
                Ok(v)
            }
            _ => {
                // A bare `Some` reads no bytes of its own (see `MAX_HOLLOW`).
                self.enter_hollow()?;
                let v = visitor.visit_some(&mut *self)?;
                self.hollow -= 1;
                Ok(v)
            }
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? {
            NULL | UNDEFINED => {
                self.pos += 1;
                visitor.visit_unit()
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Reads no bytes of its own, as a bare `Some` (see `MAX_HOLLOW`).
        self.enter_hollow()?;
        let v = visitor.visit_newtype_struct(&mut *self)?;
        self.hollow -= 1;
        Ok(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let at = self.pos;
        let h = self.head()?;
        match h.major {
            TEXT => {
                let name = self.text(h.value)?;
                visitor.visit_enum(IntoDeserializer::<Error>::into_deserializer(name))
            }
            MAP if h.value == 1 => {
                self.enter()?;
                let v = visitor.visit_enum(Variant {
                    de: &mut *self,
                    name: "",
                })?;
                self.depth -= 1;
                Ok(v)
            }
            _ => {
                // Not a variant: let the visitor say what it expected, over what is here.
                self.pos = at;
                self.deserialize_any(NotAnEnum(visitor))
            }
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // serde's own f32 accepts any f64 by rounding it: a recorded `f64` that an `f32`
        // cannot hold exactly would come back as another number.
        match self.float()? {
            Some(Float::F32(f)) => visitor.visit_f32(f),
            Some(Float::F64(f)) if f.is_nan() || f64::from(f as f32) == f => {
                visitor.visit_f32(f as f32)
            }
            Some(Float::F64(f)) => Err(de::Error::custom(format_args!(
                "the recorded number {f} does not fit an f32 exactly"
            ))),
            None => self.exact_float(visitor, 24),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.float()? {
            Some(Float::F32(f)) => visitor.visit_f64(f64::from(f)),
            Some(Float::F64(f)) => visitor.visit_f64(f),
            None => self.exact_float(visitor, 53),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // A nested journal value is a byte string like any other to its reader.
        if self.peek()? == NESTED_TAG {
            self.pos += 1;
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip()?;
        visitor.visit_unit()
    }

    // The common items, read without the dispatch of `deserialize_any`; anything else
    // goes there, and the visitor says what it expected.
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? >> 5 {
            TEXT => {
                let h = self.head()?;
                visitor.visit_borrowed_str(self.text(h.value)?)
            }
            _ => self.deserialize_any(visitor),
        }
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? >> 5 {
            ARRAY => {
                let h = self.head()?;
                let n = self.length(h.value, 1)?;
                self.seq(n, visitor)
            }
            _ => self.deserialize_any(visitor),
        }
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? >> 5 {
            MAP => {
                let h = self.head()?;
                let n = self.length(h.value, 2)?;
                self.map(n, visitor)
            }
            _ => self.deserialize_any(visitor),
        }
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i128 u128 char tuple tuple_struct
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

impl<'de> Decoder<'de> {
    /// An integer of up to 64 bits, for any integer type: the visitor checks the range.
    #[inline]
    fn integer<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        match self.peek()? >> 5 {
            UINT => {
                let h = self.head()?;
                visitor.visit_u64(h.value)
            }
            NINT => {
                let h = self.head()?;
                match i64::try_from(h.value) {
                    Ok(n) => visitor.visit_i64(-1 - n),
                    Err(_) => visitor.visit_i128(-1 - i128::from(h.value)),
                }
            }
            _ => self.deserialize_any(visitor),
        }
    }

    /// An integer read as a float: only if the float holds it exactly (`mantissa` bits).
    fn exact_float<V: Visitor<'de>>(
        &mut self,
        visitor: V,
        mantissa: u32,
    ) -> Result<V::Value, Error> {
        let at = self.pos;
        let h = self.head()?;
        // The integer's absolute value: `h.value` for major type 0, `h.value + 1` for
        // major type 1 (which stores `-1 - n`).
        let magnitude = match h.major {
            UINT => u128::from(h.value),
            NINT => u128::from(h.value) + 1,
            _ => {
                self.pos = at;
                return self.deserialize_any(visitor);
            }
        };
        // The significant bits a float must hold (none for zero).
        let bits = match magnitude {
            0 => 0,
            m => 128 - m.leading_zeros() - m.trailing_zeros(),
        };
        if bits > mantissa {
            let sign = if h.major == NINT { "-" } else { "" };
            return Err(de::Error::custom(format_args!(
                "the recorded integer {sign}{magnitude} does not fit a float exactly"
            )));
        }
        let f = if h.major == NINT {
            -(magnitude as f64)
        } else {
            magnitude as f64
        };
        if mantissa == 24 {
            visitor.visit_f32(f as f32)
        } else {
            visitor.visit_f64(f)
        }
    }
}

/// Says "expected an enum" in the visitor's own words when the item is not a variant.
struct NotAnEnum<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for NotAnEnum<V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

struct Elements<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let i = self.index;
        self.index += 1;
        seed.deserialize(&mut *self.de)
            .map(Some)
            .map_err(|e| e.at(Segment::Index(i)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.left()))
    }
}

struct Entries<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
    index: usize,
    /// Where the current entry's key starts, to name it in an error's location.
    key_at: usize,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.index += 1;
        self.key_at = self.de.pos;
        let i = self.index - 1;
        seed.deserialize(&mut *self.de)
            .map(Some)
            .map_err(|e| e.at(Segment::Index(i)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let i = self.index.saturating_sub(1);
        let key_at = self.key_at;
        let input = self.de.input;
        seed.deserialize(&mut *self.de).map_err(|e| {
            // Named by its key if that is text (a struct's field), else by position; read
            // again only now, on the way out of an error.
            let mut key = Decoder {
                input,
                pos: key_at,
                depth: 0,
                hollow: 0,
            };
            match key.head() {
                Ok(h) if h.major == TEXT => match key.text(h.value) {
                    Ok(name) => e.at(Segment::Field(name.to_owned())),
                    Err(_) => e.at(Segment::Index(i)),
                },
                _ => e.at(Segment::Index(i)),
            }
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.left() / 2))
    }
}

/// A variant written as `{ name: content }` (its map head read).
struct Variant<'a, 'de> {
    de: &'a mut Decoder<'de>,
    /// Its name, once read (for error locations).
    name: &'de str,
}

impl Variant<'_, '_> {
    fn inside(&self, e: Error) -> Error {
        e.at(Segment::Variant(self.name.to_owned()))
    }
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(mut self, seed: S) -> Result<(S::Value, Self), Error> {
        let h = self.de.head()?;
        if h.major != TEXT {
            // A map of one entry, but not a variant (its key is not a name): a value of
            // another type, not damage.
            return Err(de::Error::custom(
                "expected an enum variant, found a map whose key is not a variant's name",
            ));
        }
        self.name = self.de.text(h.value)?;
        let v = seed.deserialize(IntoDeserializer::<Error>::into_deserializer(self.name))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        // `{ "Name": null }` is how some writers put a unit variant; accept its content.
        let de = &mut *self.de;
        de::Deserialize::deserialize(de).map_err(|e| self.inside(e))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        let de = &mut *self.de;
        seed.deserialize(de).map_err(|e| self.inside(e))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        let de = &mut *self.de;
        de::Deserializer::deserialize_any(de, visitor).map_err(|e| self.inside(e))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let de = &mut *self.de;
        de::Deserializer::deserialize_any(de, visitor).map_err(|e| self.inside(e))
    }
}

// ---------------------------------------------------------------------------------------
// Rendering (for error messages)

/// A short JSON-like rendering of an encoded value, cut after about `limit` characters.
pub(crate) fn render(body: &[u8], limit: usize) -> String {
    let mut out = String::new();
    let done = decode_seed(
        Render {
            out: &mut out,
            limit,
        },
        body,
    );
    match done {
        Ok(()) => out,
        Err(_) => {
            // Cut (or unreadable): keep what was rendered, on a character boundary.
            let mut end = out.len().min(limit);
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push('…');
            out
        }
    }
}

struct Render<'a> {
    out: &'a mut String,
    limit: usize,
}

impl Render<'_> {
    fn push(&mut self, s: &str) -> Result<(), Error> {
        self.out.push_str(s);
        if self.out.len() > self.limit {
            // Stops the walk: the rest is not shown.
            return Err(Error::malformed("cut"));
        }
        Ok(())
    }

    fn again(&mut self) -> Render<'_> {
        Render {
            out: self.out,
            limit: self.limit,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Render<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Render<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.push(if v { "true" } else { "false" })
            .map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.push(&v.to_string()).map_err(E::custom)
    }
    fn visit_i128<E: de::Error>(mut self, v: i128) -> Result<(), E> {
        self.push(&v.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.push(&v.to_string()).map_err(E::custom)
    }
    fn visit_u128<E: de::Error>(mut self, v: u128) -> Result<(), E> {
        self.push(&v.to_string()).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.push(&format!("{v:?}")).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.push(&format!("{v:?}")).map_err(E::custom)
    }
    fn visit_bytes<E: de::Error>(mut self, v: &[u8]) -> Result<(), E> {
        self.push(&format!("<{} bytes>", v.len()))
            .map_err(E::custom)
    }
    fn visit_none<E: de::Error>(mut self) -> Result<(), E> {
        self.push("null").map_err(E::custom)
    }
    fn visit_some<D: Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        // Only a tagged `Some` (one around an `Option`) comes here: shown as such, so
        // `Some(None)` does not read as `null`.
        self.push("Some(").map_err(de::Error::custom)?;
        d.deserialize_any(self.again())?;
        self.push(")").map_err(de::Error::custom)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.push("()").map_err(E::custom)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        use de::Error as _;
        self.push("[").map_err(A::Error::custom)?;
        let mut first = true;
        loop {
            if !first {
                self.push(", ").map_err(A::Error::custom)?;
            }
            if seq.next_element_seed(self.again())?.is_none() {
                if !first {
                    // Undo the separator pushed for an element that did not come.
                    self.out.truncate(self.out.len() - 2);
                }
                break;
            }
            first = false;
        }
        self.push("]").map_err(A::Error::custom)
    }
    fn visit_map<A: de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        use de::Error as _;
        self.push("{").map_err(A::Error::custom)?;
        let mut first = true;
        while map.next_key_seed(Prefixed(self.again(), !first))?.is_some() {
            self.push(": ").map_err(A::Error::custom)?;
            map.next_value_seed(self.again())?;
            first = false;
        }
        self.push("}").map_err(A::Error::custom)
    }
}

/// A map key, after a separator unless it is the first.
struct Prefixed<'a>(Render<'a>, bool);

impl<'de> DeserializeSeed<'de> for Prefixed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let Prefixed(mut r, separate) = self;
        if separate {
            r.push(", ").map_err(de::Error::custom)?;
        }
        d.deserialize_any(r)
    }
}
