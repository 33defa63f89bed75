//! A serde `Deserializer` wrapper that caps the length hints a bincode row can claim.
//!
//! bincode's serde decoder hands each sequence and map its claimed length as a size
//! hint, and serde's collections reserve up to 1 MiB from that hint before reading a
//! single element. A 9-byte row claiming `u64::MAX` elements would make every decode
//! reserve that much. Every element of a bincode row takes at least one byte, so no
//! valid row of `n` bytes holds more than `n` elements: this wrapper caps every hint at
//! `n`, which bounds each reservation by what a valid row of the same size could need.
//!
//! Zero-sized elements (`()`, unit structs) take no bytes, so a claimed length of
//! `u64::MAX` over them would decode "successfully" for ever. The wrapper therefore also
//! counts: a sequence or map yielding more than `n + ZERO_SIZED_ALLOWANCE` elements is an
//! error. Elements of any other type take at least one byte each and stop at `n`.
//!
//! Nesting is limited too, to [`super::cbor::MAX_DEPTH`] levels as in CBOR: bincode
//! reads as deeply as the type asks, and a recursive type read from a hostile row (or
//! from a row of another type) would otherwise exhaust the thread's stack.
//!
//! Otherwise every call is forwarded as it is.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Wraps a deserializer (and, recursively, everything it hands out).
pub(super) struct Capped<D> {
    pub(super) inner: D,
    pub(super) cap: usize,
}

struct CappedVisitor<V> {
    inner: V,
    cap: usize,
}

struct CappedSeed<S> {
    inner: S,
    cap: usize,
}

struct CappedAccess<A> {
    inner: A,
    cap: usize,
    /// Elements (or map entries) yielded so far.
    seen: usize,
}

/// How many elements beyond one per byte a sequence may yield: room for sequences of
/// zero-sized values, small enough that a hostile length is refused in milliseconds.
const ZERO_SIZED_ALLOWANCE: usize = 1 << 16;

impl<A> CappedAccess<A> {
    fn new(inner: A, cap: usize) -> Self {
        CappedAccess {
            inner,
            cap,
            seen: 0,
        }
    }

    /// Counts one more element; an error once there are more than the row can hold.
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        self.seen += 1;
        let limit = self.cap.saturating_add(ZERO_SIZED_ALLOWANCE);
        if self.seen > limit {
            return Err(E::custom(format_args!(
                "a sequence yields more than {limit} elements, more than a {}-byte row can hold",
                self.cap
            )));
        }
        Ok(())
    }
}

thread_local! {
    /// How deeply the value being decoded on this thread is nested (decoding is
    /// synchronous: one value at a time per thread), counted as CBOR counts it: options
    /// and newtypes apart from the rest (see `cbor::MAX_HOLLOW`), so that the two codecs
    /// take values of the same depths.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static HOLLOW: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One level of nesting, for as long as it lives.
struct Level(&'static std::thread::LocalKey<std::cell::Cell<u32>>);

impl Level {
    fn enter<E: de::Error>() -> Result<Level, E> {
        Level::count(&DEPTH, super::cbor::MAX_DEPTH, "levels")
    }

    fn enter_hollow<E: de::Error>() -> Result<Level, E> {
        Level::count(&HOLLOW, super::cbor::MAX_HOLLOW, "newtypes and `Option`s")
    }

    fn count<E: de::Error>(
        key: &'static std::thread::LocalKey<std::cell::Cell<u32>>,
        max: u32,
        what: &str,
    ) -> Result<Level, E> {
        let depth = key.with(|d| {
            let depth = d.get() + 1;
            d.set(depth);
            depth
        });
        // Counted before the check, so the drop below always undoes it.
        let level = Level(key);
        if depth > max {
            return Err(E::custom(format_args!(
                "the value is nested more than {max} {what} deep"
            )));
        }
        Ok(level)
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        let _ = self.0.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
}

macro_rules! forward_deserialize {
    // Scalars: forwarded.
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let cap = self.cap;
                self.inner.$method($($arg,)* CappedVisitor { inner: visitor, cap })
            }
        )*
    };
}

macro_rules! forward_nested {
    // What can hold other values: forwarded one level deeper.
    ($enter:ident: $($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let _level = Level::$enter::<D::Error>()?;
                let cap = self.cap;
                self.inner.$method($($arg,)* CappedVisitor { inner: visitor, cap })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Capped<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_bytes(); deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_identifier();
    }

    forward_nested! {
        enter_hollow: deserialize_option(); deserialize_newtype_struct(name: &'static str);
    }

    forward_nested! {
        enter: deserialize_any(); deserialize_seq(); deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize); deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_ignored_any();
    }

    // Owned strings and buffers are read as borrowed slices: bincode reads an owned one
    // into a buffer of the length its prefix claims, before it knows whether the row
    // holds that much; a borrowed slice is checked against the row first.
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.deserialize_bytes(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for CappedVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char);
        visit_str(&str); visit_borrowed_str(&'de str); visit_string(String);
        visit_bytes(&[u8]); visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Capped {
            inner: d,
            cap: self.cap,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(Capped {
            inner: d,
            cap: self.cap,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(CappedAccess::new(seq, self.cap))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(CappedAccess::new(map, self.cap))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(CappedAccess::new(data, self.cap))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for CappedSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Capped {
            inner: d,
            cap: self.cap,
        })
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for CappedAccess<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let cap = self.cap;
        let next = self
            .inner
            .next_element_seed(CappedSeed { inner: seed, cap })?;
        if next.is_some() {
            self.count()?;
        }
        Ok(next)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint().map(|n| n.min(self.cap))
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for CappedAccess<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let cap = self.cap;
        let next = self.inner.next_key_seed(CappedSeed { inner: seed, cap })?;
        if next.is_some() {
            self.count()?;
        }
        Ok(next)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(CappedSeed {
            inner: seed,
            cap: self.cap,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint().map(|n| n.min(self.cap))
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for CappedAccess<A> {
    type Error = A::Error;
    type Variant = CappedAccess<A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let cap = self.cap;
        let (value, variant) = self.inner.variant_seed(CappedSeed { inner: seed, cap })?;
        Ok((value, CappedAccess::new(variant, cap)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for CappedAccess<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(CappedSeed {
            inner: seed,
            cap: self.cap,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let cap = self.cap;
        self.inner.tuple_variant(
            len,
            CappedVisitor {
                inner: visitor,
                cap,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let cap = self.cap;
        self.inner.struct_variant(
            fields,
            CappedVisitor {
                inner: visitor,
                cap,
            },
        )
    }
}
