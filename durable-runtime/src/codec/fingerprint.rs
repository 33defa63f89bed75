//! Fingerprints: 64-bit hashes of what a serde value says, independent of how a codec
//! writes it.
//!
//! Two kinds, computed by one hashing `Serializer` in two modes:
//!
//! - a **value fingerprint** ([`value`]) hashes the value itself: kinds, numbers,
//!   strings, field and variant names. The journal records one for each step's
//!   arguments, so a replay that asks for the same step with other arguments is caught.
//!   Integers are hashed by value whatever their width (`7u32` and `7u64` agree), so a
//!   widened argument type is not a change; a newtype struct is its inner value.
//! - a **shape fingerprint** ([`shape`]) hashes only the structure: which kind of
//!   scalar sits where (unsigned integer, signed integer, `f32`, `f64`, string, ...),
//!   field names in order, the variant taken by each enum, the arity of tuples. It guards
//!   bincode, which is not self-describing: a value decoded through a changed type gets
//!   another shape, so a read that would return a different value is refused instead.
//!
//! Both hash the entries of a map, and the elements of a sequence, as unordered
//! collections (multisets): a `HashMap` or a `HashSet` iterates in another order in
//! every process (a `HashSet` is a sequence to serde, like a `Vec`), and a workflow that
//! passes one through a step unchanged must replay. The price is that a sequence given
//! in another order with the same elements counts as the same argument. Everything with
//! positions keeps them: the arguments of a call, tuples, struct fields, strings and
//! byte strings (`serde_bytes`). A `Vec<u8>` is a sequence to serde, like a
//! `HashSet<u8>`, so it compares as a multiset too: a payload whose order must count
//! is best passed as a byte string or a `String`.
//!
//! In a value fingerprint, `Some(x)` is `x` (a field that became an `Option` holds the
//! same argument), except that `Some` of an `Option` is marked (`Some(None)` is not
//! `None`); a struct leaves out its fields that hold nothing (`None`, `0`, `false`, an
//! empty string or collection), so a field added with such a default is not a change,
//! while a `Some` always holds something (`Some(0)` is not `None`). An `f32` hashes as
//! the `f64` it widens to, and a `char` as a one-character string.
//!
//! The hash is our own (a multiply-rotate mix with a splitmix64 finish), fixed for the
//! journal's schema version: fingerprints are compared across processes, machines and
//! releases, so they cannot use `std`'s unspecified `DefaultHasher`.
//!
//! [`of_encoded`] computes a value fingerprint straight from a self-describing encoding
//! (no Rust type needed), for comparing recorded outputs in the testkit.

use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serializer};

/// A 64-bit fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub(crate) u64);

impl Fingerprint {
    /// The value fingerprint of `value`: what the journal records of a step's
    /// arguments. Equal values have equal fingerprints, whatever the order of their
    /// maps' entries and their sequences' elements (a `HashSet` is a sequence to serde)
    /// and the width of their integers; different values almost never do.
    ///
    /// ```
    /// use std::collections::{HashMap, HashSet};
    /// use durable_runtime::Fingerprint;
    ///
    /// let a: HashMap<&str, u32> = [("x", 1), ("y", 2)].into();
    /// let b: HashMap<&str, u64> = [("y", 2), ("x", 1)].into();
    /// assert_eq!(Fingerprint::of(&a)?, Fingerprint::of(&b)?);
    /// let s: HashSet<u32> = (0..100).collect();
    /// let t: HashSet<u32> = (0..100).rev().collect();
    /// assert_eq!(Fingerprint::of(&s)?, Fingerprint::of(&t)?);
    /// assert_ne!(Fingerprint::of(&("a", 1))?, Fingerprint::of(&("a", 2))?);
    /// # Ok::<(), durable_runtime::CodecError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// If the value's `Serialize` fails.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, super::CodecError> {
        self::value(value).map_err(|e| super::CodecError::new(e.0))
    }

    /// The fingerprint as a number (the journal stores it as this, reinterpreted as an
    /// `i64`).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A streaming 64-bit hash: each word is mixed in with a multiply and a rotation, and
/// the result goes through splitmix64's finisher, so every input bit reaches every
/// output bit.
#[derive(Debug, Clone)]
pub(crate) struct Hash64 {
    state: u64,
}

impl Hash64 {
    pub(crate) fn new() -> Self {
        Hash64 {
            state: 0x243F_6A88_85A3_08D3,
        }
    }

    pub(crate) fn word(&mut self, w: u64) {
        self.state = (self.state ^ w).wrapping_mul(K).rotate_left(29);
    }

    fn tag(&mut self, t: Tag) {
        self.word(t as u64);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut z = self.state.wrapping_add(K);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// What a hashed item is. The numbers are part of the fingerprint: never renumber.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Tag {
    Bool = 1,
    /// An integer that is zero or more (any width, signed or not, in value mode).
    Uint = 2,
    /// A negative integer (value mode), or any signed integer (shape mode).
    Sint = 3,
    F32 = 4,
    F64 = 5,
    Str = 6,
    Bytes = 7,
    None = 8,
    Some = 9,
    Unit = 10,
    Seq = 11,
    Tuple = 12,
    Map = 13,
    Struct = 14,
    Variant = 15,
    /// An argument that is not `Serialize` (value mode only): it counts, unseen.
    Opaque = 16,
    Char = 17,
    /// A journal value inside another, by its content.
    Nested = 18,
    /// An 8-bit unsigned integer (shape mode: bincode writes it as a raw byte, and wider
    /// ones as varints).
    U8 = 19,
    /// An 8-bit signed integer (shape mode).
    I8 = 20,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Value,
    Shape,
}

/// The value fingerprint of `value`.
pub(crate) fn value<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, FingerprintError> {
    let mut h = Hash64::new();
    value.serialize(Hasher::new(&mut h, Mode::Value))?;
    Ok(Fingerprint(h.finish()))
}

/// The shape fingerprint of `value`.
pub(crate) fn shape<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, FingerprintError> {
    let mut h = Hash64::new();
    value.serialize(Hasher::new(&mut h, Mode::Shape))?;
    Ok(Fingerprint(h.finish()))
}

/// The arguments of one call (a step's, or a primitive's), seen one at a time: their
/// value fingerprint, or a short readable rendering of them for an error message.
///
/// Built by the code `#[step]` generates; not API.
#[doc(hidden)]
#[derive(Debug)]
pub struct Args {
    h: Hash64,
    error: Option<FingerprintError>,
    /// Set when rendering instead of hashing.
    preview: Option<Vec<String>>,
}

/// How many characters of each argument a preview shows.
const PREVIEW_CHARS: usize = 60;

impl Args {
    pub(crate) fn hashing() -> Self {
        let mut h = Hash64::new();
        h.tag(Tag::Tuple);
        Args {
            h,
            error: None,
            preview: None,
        }
    }

    pub(crate) fn previewing() -> Self {
        Args {
            preview: Some(Vec::new()),
            ..Args::hashing()
        }
    }

    /// Adds an argument that serde can see.
    pub fn arg<T: Serialize + ?Sized>(&mut self, value: &T) {
        if let Some(p) = &mut self.preview {
            p.push(super::preview(value, PREVIEW_CHARS));
            return;
        }
        let mut sub = Hash64::new();
        let done = value.serialize(Hasher::new(&mut sub, Mode::Value));
        match done {
            Ok(_) => self.h.word(sub.finish()),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Adds an argument serde cannot see (not `Serialize`, such as a client handle): it
    /// counts by its position only.
    pub fn opaque(&mut self, type_name: &'static str) {
        if let Some(p) = &mut self.preview {
            p.push(format!("<{}>", super::short_type_name(type_name)));
            return;
        }
        self.h.tag(Tag::Opaque);
    }

    /// The fingerprint; an error if an argument's `Serialize` failed.
    pub(crate) fn finish(self) -> Result<Fingerprint, FingerprintError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(Fingerprint(self.h.finish())),
        }
    }

    /// The rendering, as an argument list: `("tea", 2)`.
    pub(crate) fn rendered(self) -> String {
        format!("({})", self.preview.unwrap_or_default().join(", "))
    }
}

/// The fingerprint of the arguments `each` adds, or `None` if one failed to serialize
/// (a failing `Serialize` is the type's business; the call is then not checked).
pub(crate) fn of_args(each: impl Fn(&mut Args)) -> Option<Fingerprint> {
    let mut a = Args::hashing();
    each(&mut a);
    a.finish().ok()
}

/// A short rendering of the arguments `each` adds.
pub(crate) fn preview_args(each: impl Fn(&mut Args)) -> String {
    let mut a = Args::previewing();
    each(&mut a);
    a.rendered()
}

/// A value's `Serialize` failed while it was being fingerprinted.
#[derive(Debug, Clone)]
pub(crate) struct FingerprintError(pub(crate) String);

impl std::fmt::Display for FingerprintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FingerprintError {}

impl ser::Error for FingerprintError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        FingerprintError(msg.to_string())
    }
}

/// The hashing serializer. What each value reports back (its `Ok`) is whether it holds
/// anything: a value mode struct leaves out its fields that hold nothing (`false`, `0`,
/// `""`, `None`, an empty collection), so that a field added with a default, or removed
/// while it held its default, does not change the fingerprint of the arguments it sits
/// in.
struct Hasher<'a> {
    h: &'a mut Hash64,
    mode: Mode,
    /// Inside a `Some` (value mode): a `None` or `Some` here is marked, so that
    /// `Some(None)` is not `None` (as the CBOR encoding keeps them apart).
    in_some: bool,
}

/// Whether a hashed value holds anything (see [`Hasher`]).
type Filled = bool;

impl<'a> Hasher<'a> {
    fn new(h: &'a mut Hash64, mode: Mode) -> Self {
        Hasher {
            h,
            mode,
            in_some: false,
        }
    }

    fn uint(self, v: u128, tag: Tag) -> Result<Filled, FingerprintError> {
        match self.mode {
            Mode::Value => {
                self.h.tag(Tag::Uint);
                self.h.word(v as u64);
                self.h.word((v >> 64) as u64);
            }
            Mode::Shape => self.h.tag(tag),
        }
        Ok(v != 0)
    }

    fn sint(self, v: i128, tag: Tag) -> Result<Filled, FingerprintError> {
        match self.mode {
            Mode::Value if v >= 0 => return self.uint(v as u128, tag),
            Mode::Value => {
                self.h.tag(Tag::Sint);
                self.h.word(v as u64);
                self.h.word((v >> 64) as u64);
            }
            Mode::Shape => self.h.tag(tag),
        }
        Ok(true)
    }

    /// An `Option` begins here: marked if it sits in a `Some` (value mode).
    fn option(&mut self) {
        if self.in_some {
            self.h.tag(Tag::Some);
        }
    }

    /// Where a variant's name goes: a shape also takes its index, which is what bincode
    /// writes (the same variants in another order are another shape).
    fn variant(&mut self, index: u32, name: &str) {
        self.h.tag(Tag::Variant);
        self.h.bytes(name.as_bytes());
        if self.mode == Mode::Shape {
            self.h.word(index.into());
        }
    }
}

/// An ordered or unordered collection being hashed.
struct Compound<'a> {
    h: &'a mut Hash64,
    mode: Mode,
    /// Unordered: the wrapping sum of the items' own hashes (a multiset hash); ordered:
    /// items are mixed into `h` one after the other.
    unordered: bool,
    /// Named fields of a struct, in value mode: the ones that hold nothing are left out.
    skip_empty_fields: bool,
    sum: u64,
    count: u64,
    filled: bool,
    /// A map key's hash, waiting for its value.
    key: Option<u64>,
}

impl<'a> Compound<'a> {
    fn new(h: &'a mut Hash64, mode: Mode, tag: Tag, unordered: bool) -> Self {
        h.tag(tag);
        Compound {
            h,
            mode,
            unordered,
            skip_empty_fields: false,
            sum: 0,
            count: 0,
            filled: false,
            key: None,
        }
    }

    /// A struct's fields: in value mode an unordered set of the fields that hold
    /// something (declaration order and defaulted fields do not count); in shape mode
    /// every field, in order (bincode reads them by position).
    fn fields(h: &'a mut Hash64, mode: Mode) -> Self {
        let value = mode == Mode::Value;
        Compound {
            skip_empty_fields: value,
            ..Compound::new(h, mode, Tag::Struct, value)
        }
    }

    /// Hashes `v` on its own: its hash, and whether it holds anything.
    fn hash_of<T: Serialize + ?Sized>(&self, v: &T) -> Result<(u64, Filled), FingerprintError> {
        let mut sub = Hash64::new();
        let filled = v.serialize(Hasher::new(&mut sub, self.mode))?;
        Ok((sub.finish(), filled))
    }

    fn add(&mut self, x: u64) {
        self.count += 1;
        if self.unordered {
            self.sum = self.sum.wrapping_add(x);
        } else {
            self.h.word(x);
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FingerprintError> {
        let (x, _) = self.hash_of(v)?;
        self.add(x);
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), FingerprintError> {
        let (x, filled) = self.hash_of(v)?;
        if !self.unordered {
            // Shape mode: every field, in order, mixed in as it comes.
            self.h.bytes(name.as_bytes());
            self.h.word(x);
            self.count += 1;
            return Ok(());
        }
        if self.skip_empty_fields && !filled {
            return Ok(());
        }
        self.filled |= filled;
        let mut named = Hash64::new();
        named.bytes(name.as_bytes());
        named.word(x);
        self.add(named.finish());
        Ok(())
    }

    fn key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), FingerprintError> {
        self.key = Some(self.hash_of(k)?.0);
        Ok(())
    }

    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FingerprintError> {
        let (x, _) = self.hash_of(v)?;
        let mut entry = Hash64::new();
        entry.word(self.key.take().unwrap_or_default());
        entry.word(x);
        self.add(entry.finish());
        Ok(())
    }

    fn finish(self) -> Result<Filled, FingerprintError> {
        if self.unordered {
            self.h.word(self.sum);
        }
        if self.mode == Mode::Value || !self.unordered {
            self.h.word(self.count);
        }
        // A struct holds something if one of its fields does; a collection or tuple if it
        // has an element (`[0]` is not `[]`); a variant always does.
        Ok(self.filled || (!self.skip_empty_fields && self.count > 0))
    }
}

serialize_compound!(Compound<'_>, FingerprintError, Filled);

impl<'a> Serializer for Hasher<'a> {
    type Ok = Filled;
    type Error = FingerprintError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<Filled, FingerprintError> {
        self.h.tag(Tag::Bool);
        if self.mode == Mode::Value {
            self.h.word(u64::from(v));
        }
        Ok(v)
    }
    fn serialize_i8(self, v: i8) -> Result<Filled, FingerprintError> {
        self.sint(v.into(), Tag::I8)
    }
    fn serialize_i16(self, v: i16) -> Result<Filled, FingerprintError> {
        self.sint(v.into(), Tag::Sint)
    }
    fn serialize_i32(self, v: i32) -> Result<Filled, FingerprintError> {
        self.sint(v.into(), Tag::Sint)
    }
    fn serialize_i64(self, v: i64) -> Result<Filled, FingerprintError> {
        self.sint(v.into(), Tag::Sint)
    }
    fn serialize_i128(self, v: i128) -> Result<Filled, FingerprintError> {
        self.sint(v, Tag::Sint)
    }
    fn serialize_u8(self, v: u8) -> Result<Filled, FingerprintError> {
        self.uint(v.into(), Tag::U8)
    }
    fn serialize_u16(self, v: u16) -> Result<Filled, FingerprintError> {
        self.uint(v.into(), Tag::Uint)
    }
    fn serialize_u32(self, v: u32) -> Result<Filled, FingerprintError> {
        self.uint(v.into(), Tag::Uint)
    }
    fn serialize_u64(self, v: u64) -> Result<Filled, FingerprintError> {
        self.uint(v.into(), Tag::Uint)
    }
    fn serialize_u128(self, v: u128) -> Result<Filled, FingerprintError> {
        self.uint(v, Tag::Uint)
    }
    fn serialize_f32(self, v: f32) -> Result<Filled, FingerprintError> {
        if self.mode == Mode::Value {
            // By value, as the `f64` it widens to exactly: a field that became an
            // `f64` holds the same argument.
            return self.serialize_f64(v.into());
        }
        self.h.tag(Tag::F32);
        Ok(v.to_bits() != 0)
    }
    fn serialize_f64(self, v: f64) -> Result<Filled, FingerprintError> {
        self.h.tag(Tag::F64);
        if self.mode == Mode::Value {
            self.h.word(v.to_bits());
        }
        Ok(v.to_bits() != 0)
    }
    fn serialize_char(self, v: char) -> Result<Filled, FingerprintError> {
        if self.mode == Mode::Value {
            // As the one-character string it is (a `char` that became a `String`).
            return self.serialize_str(v.encode_utf8(&mut [0; 4]));
        }
        self.h.tag(Tag::Char);
        Ok(v != '\0')
    }
    fn serialize_str(self, v: &str) -> Result<Filled, FingerprintError> {
        self.h.tag(Tag::Str);
        if self.mode == Mode::Value {
            self.h.bytes(v.as_bytes());
        }
        Ok(!v.is_empty())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Filled, FingerprintError> {
        self.h.tag(Tag::Bytes);
        if self.mode == Mode::Value {
            self.h.bytes(v);
        }
        Ok(!v.is_empty())
    }
    fn serialize_none(mut self) -> Result<Filled, FingerprintError> {
        self.option();
        self.h.tag(Tag::None);
        Ok(false)
    }
    fn serialize_some<T: Serialize + ?Sized>(mut self, v: &T) -> Result<Filled, FingerprintError> {
        // A value fingerprint reads `Some(x)` as `x` (a field that became an `Option`
        // holds the same argument), except that `Some` of an `Option` is marked. A shape
        // tells them apart (bincode writes a tag).
        match self.mode {
            Mode::Shape => self.h.tag(Tag::Some),
            Mode::Value => self.option(),
        }
        v.serialize(Hasher {
            h: self.h,
            mode: self.mode,
            in_some: true,
        })?;
        // A `Some` holds something, whatever it holds: `Some(0)` or `Some(vec![])` is
        // not the `None` a defaulted field leaves out.
        Ok(true)
    }
    fn serialize_unit(self) -> Result<Filled, FingerprintError> {
        self.h.tag(Tag::Unit);
        Ok(false)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Filled, FingerprintError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        mut self,
        _: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<Filled, FingerprintError> {
        self.variant(index, variant);
        self.h.tag(Tag::Unit);
        Ok(true)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Filled, FingerprintError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Filled, FingerprintError> {
        self.variant(index, variant);
        v.serialize(Hasher::new(self.h, self.mode))?;
        Ok(true)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, FingerprintError> {
        Ok(Compound::new(self.h, self.mode, Tag::Seq, true))
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound<'a>, FingerprintError> {
        Ok(Compound::new(self.h, self.mode, Tag::Tuple, false))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, FingerprintError> {
        Ok(Compound::new(self.h, self.mode, Tag::Tuple, false))
    }
    fn serialize_tuple_variant(
        mut self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, FingerprintError> {
        self.variant(index, variant);
        let mut c = Compound::new(self.h, self.mode, Tag::Tuple, false);
        c.filled = true;
        Ok(c)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, FingerprintError> {
        Ok(Compound::new(self.h, self.mode, Tag::Map, true))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, FingerprintError> {
        Ok(Compound::fields(self.h, self.mode))
    }
    fn serialize_struct_variant(
        mut self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, FingerprintError> {
        self.variant(index, variant);
        let mut c = Compound::fields(self.h, self.mode);
        c.filled = true;
        Ok(c)
    }
    fn is_human_readable(&self) -> bool {
        // Hashes what the journal's codecs see, which are binary.
        false
    }
}

/// The value fingerprint of whatever a self-describing deserializer holds, computed
/// without its Rust type. Used on recorded outputs, so it follows [`value`] where the
/// encoding can tell (integers by value, maps and sequences unordered); structs read
/// as maps (with all their fields), so it is consistent with itself, not with [`value`].
///
/// `level` counts the journal values this one is nested in; the runtime nests one
/// level (a message in a `recv`, a child's output in its parent's record), and values
/// nested deeper than [`MAX_NESTED`] count by their bytes, so a crafted row cannot
/// recurse through them without bound.
pub(crate) fn of_encoded<'de, D: Deserializer<'de>>(
    d: D,
    level: u32,
) -> Result<Fingerprint, D::Error> {
    let mut h = Hash64::new();
    d.deserialize_any(HashVisitor { h: &mut h, level })?;
    Ok(Fingerprint(h.finish()))
}

/// How many journal values deep [`of_encoded`] reads nested ones by their content.
const MAX_NESTED: u32 = 2;

struct HashVisitor<'a> {
    h: &'a mut Hash64,
    level: u32,
}

/// Hashes one value inside another into a fresh hash, returning it.
struct HashSeed(u32);

impl<'de> DeserializeSeed<'de> for HashSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        let mut h = Hash64::new();
        d.deserialize_any(HashVisitor {
            h: &mut h,
            level: self.0,
        })?;
        Ok(h.finish())
    }
}

/// A journal value the runtime nested in another: hashed by its content.
struct NestedVisitor<'a> {
    h: &'a mut Hash64,
    level: u32,
}

impl<'de> Visitor<'de> for NestedVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a nested journal value")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        let inner = if self.level < MAX_NESTED {
            super::nested_content(v, self.level + 1)
        } else {
            None
        };
        match inner {
            Some(f) => {
                self.h.tag(Tag::Nested);
                self.h.word(f.0);
            }
            None => {
                self.h.tag(Tag::Bytes);
                self.h.bytes(v);
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for HashVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.h.tag(Tag::Bool);
        self.h.word(u64::from(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_i128(v.into())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<(), E> {
        if v >= 0 {
            return self.visit_u128(v as u128);
        }
        self.h.tag(Tag::Sint);
        self.h.word(v as u64);
        self.h.word((v >> 64) as u64);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_u128(v.into())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<(), E> {
        self.h.tag(Tag::Uint);
        self.h.word(v as u64);
        self.h.word((v >> 64) as u64);
        Ok(())
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<(), E> {
        self.h.tag(Tag::F32);
        self.h.word(v.to_bits().into());
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.h.tag(Tag::F64);
        self.h.word(v.to_bits());
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.h.tag(Tag::Str);
        self.h.bytes(v.as_bytes());
        Ok(())
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        // A user's bytes, by their bytes (whatever they look like).
        self.h.tag(Tag::Bytes);
        self.h.bytes(v);
        Ok(())
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // A journal value nested in another (a message in the `recv` that took it, a
        // child's output in its parent's record) counts by its content.
        d.deserialize_bytes(NestedVisitor {
            h: self.h,
            level: self.level,
        })
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.h.tag(Tag::None);
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.h.tag(Tag::Some);
        d.deserialize_any(HashVisitor {
            h: self.h,
            level: self.level,
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.h.tag(Tag::Unit);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Unordered, as in `value`: an array may be a set.
        self.h.tag(Tag::Seq);
        let (mut sum, mut count) = (0u64, 0u64);
        while let Some(x) = seq.next_element_seed(HashSeed(self.level))? {
            sum = sum.wrapping_add(x);
            count += 1;
        }
        self.h.word(sum);
        self.h.word(count);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.h.tag(Tag::Map);
        let (mut sum, mut count) = (0u64, 0u64);
        while let Some(k) = map.next_key_seed(HashSeed(self.level))? {
            let v = map.next_value_seed(HashSeed(self.level))?;
            let mut e = Hash64::new();
            e.word(k);
            e.word(v);
            sum = sum.wrapping_add(e.finish());
            count += 1;
        }
        self.h.word(sum);
        self.h.word(count);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::*;

    #[derive(Serialize)]
    struct Order {
        sku: String,
        qty: u32,
    }

    #[derive(Serialize)]
    enum Status {
        Pending,
        Approved,
    }

    fn v<T: Serialize + ?Sized>(x: &T) -> u64 {
        value(x).expect("fingerprint").0
    }

    fn s<T: Serialize>(x: &T) -> u64 {
        shape(x).expect("shape").0
    }

    #[test]
    fn values_differ_by_content_and_agree_across_integer_widths() {
        assert_eq!(v(&7u32), v(&7u64));
        assert_eq!(v(&7i32), v(&7u8));
        assert_ne!(v(&7u32), v(&8u32));
        assert_ne!(v(&-1i32), v(&u32::MAX));
        assert_ne!(v(&"a"), v(&"b"));
        // Sequences are multisets (a `HashSet` is a sequence to serde); arguments,
        // tuples and strings keep their order.
        assert_eq!(v(&vec![1, 2]), v(&vec![2, 1]));
        assert_ne!(v(&vec![1, 2]), v(&vec![1, 1, 2]));
        assert_ne!(v(&(1, 2)), v(&(2, 1)));
        assert_ne!(v("ab"), v("ba"));
        // `Some(x)` is read as `x`: a field that became an `Option` holds the same.
        assert_eq!(v(&Some(1)), v(&1));
        assert_ne!(v(&Status::Pending), v(&Status::Approved));
        let a = Order {
            sku: "tea".into(),
            qty: 1,
        };
        let b = Order {
            sku: "tea".into(),
            qty: 2,
        };
        assert_ne!(v(&a), v(&b));
    }

    #[test]
    fn a_field_added_with_its_default_or_reordered_does_not_change_a_value() {
        #[derive(Serialize)]
        struct V1 {
            sku: String,
            qty: u32,
            retired: bool,
        }
        #[derive(Serialize)]
        struct V2 {
            qty: u64,
            sku: Option<String>,
            gift: bool,
            tags: Vec<String>,
            note: Option<String>,
        }
        let v1 = V1 {
            sku: "tea".into(),
            qty: 7,
            retired: false,
        };
        let v2 = V2 {
            qty: 7,
            sku: Some("tea".into()),
            gift: false,
            tags: vec![],
            note: None,
        };
        assert_eq!(v(&v1), v(&v2));
        // What a field holds still counts, whatever it holds.
        let gift = V2 { gift: true, ..v2 };
        assert_ne!(v(&v1), v(&gift));
        let zero = V2 {
            tags: vec![String::new()],
            gift: false,
            ..gift
        };
        assert_ne!(v(&v1), v(&zero));
        let retired = V1 {
            sku: "tea".into(),
            qty: 7,
            retired: true,
        };
        assert_ne!(v(&retired), v(&v1));
    }

    #[test]
    fn maps_hash_the_same_in_any_order() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..100u32 {
            a.insert(i, i.to_string());
        }
        for i in (0..100u32).rev() {
            b.insert(i, i.to_string());
        }
        let sorted: BTreeMap<u32, String> = a.clone().into_iter().collect();
        assert_eq!(v(&a), v(&b));
        assert_eq!(v(&a), v(&sorted));
        b.insert(100, "x".into());
        assert_ne!(v(&a), v(&b));
    }

    #[test]
    fn shapes_ignore_values_and_order_but_not_kinds_or_names() {
        assert_eq!(s(&7u32), s(&9u64));
        assert_ne!(s(&7u32), s(&7i32));
        assert_ne!(s(&1.0f32), s(&1.0f64));
        assert_ne!(s(&Status::Pending), s(&Status::Approved));
        let set: HashSet<u32> = (0..50).collect();
        let other: HashSet<u32> = (0..50).rev().collect();
        assert_eq!(s(&set), s(&other));
        #[derive(Serialize)]
        struct Renamed {
            sku: String,
            count: u32,
        }
        let a = Order {
            sku: "a".into(),
            qty: 1,
        };
        let b = Renamed {
            sku: "b".into(),
            count: 2,
        };
        assert_ne!(s(&a), s(&b));
    }

    #[test]
    fn arguments_count_opaque_ones_by_position() {
        let a = of_args(|a| {
            a.arg(&1u32);
            a.opaque("Client");
        });
        let b = of_args(|a| {
            a.opaque("Client");
            a.arg(&1u32);
        });
        let c = of_args(|a| {
            a.arg(&1u32);
            a.opaque("Other");
        });
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert!(a.is_some());
    }

    #[test]
    fn previews_render_arguments_briefly() {
        let text = preview_args(|a| {
            a.arg("tea");
            a.arg(&2u32);
            a.arg(&Order {
                sku: "x".repeat(200),
                qty: 1,
            });
            a.opaque("alloc::sync::Arc<my::Client>");
        });
        assert!(text.starts_with(r#"("tea", 2, {"sku": "xxx"#), "{text}");
        assert!(text.ends_with("…, <Arc<Client>>)"), "{text}");
        // `Some(None)` is not shown as the `null` of a `None`.
        let text = preview_args(|a| {
            a.arg(&Some(None::<u8>));
            a.arg(&None::<Option<u8>>);
            a.arg(&Some(Some(3u8)));
        });
        assert_eq!(text, "(Some(null), null, Some(3))");
    }
}
