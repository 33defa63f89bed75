//! The journal's codecs, through the public `Codec` API: every serde value round-trips
//! exactly (property tests over generated values of many shapes and sizes), types evolve
//! the way serde users expect under the default codec, and no change of type ever reads
//! back a different value, under either codec.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use durable_runtime::Codec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

const CODECS: [Codec; 2] = [Codec::Cbor, Codec::Bincode];

/// Encodes with `codec` and decodes as `U`.
fn convert<T: Serialize, U: Serialize + DeserializeOwned>(
    codec: Codec,
    value: &T,
) -> Result<U, String> {
    let bytes = codec.encode(value).map_err(|e| format!("encode: {e}"))?;
    Codec::decode::<U>(&bytes).map_err(|e| e.to_string())
}

/// Both codecs give back exactly `value`.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    for codec in CODECS {
        let back: T = convert(codec, value).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert_eq!(&back, value, "{codec:?}");
    }
}

/// Both codecs give back exactly `value`'s bits (for floats, where `NaN != NaN`).
fn round_trips_bits<T: Serialize + DeserializeOwned>(value: &T, bits: impl Fn(&T) -> Vec<u64>) {
    for codec in CODECS {
        let back: T = convert(codec, value).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert_eq!(bits(&back), bits(value), "{codec:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Every serde value round-trips.

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Any {
    Unit,
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    U128(u128),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    I128(i128),
    F32(f32),
    F64(f64),
    Char(char),
    Str(String),
    Bytes(#[serde(with = "bytes")] Vec<u8>),
    Seq(Vec<Any>),
    Map(BTreeMap<Key, Any>),
    Opt(Option<Box<Any>>),
    OptOpt(Option<Option<u8>>),
    Tuple(u8, String, Box<Any>),
    Struct { name: String, inner: Box<Any> },
    UnitStruct(Marker),
    Newtype(Wrapper),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Key {
    Num(i64),
    Text(String),
    Pair(u8, bool),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wrapper(u64);

mod bytes {
    pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        any::<i64>().prop_map(Key::Num),
        ".{0,12}".prop_map(Key::Text),
        (any::<u8>(), any::<bool>()).prop_map(|(a, b)| Key::Pair(a, b)),
    ]
}

fn leaf() -> impl Strategy<Value = Any> {
    prop_oneof![
        Just(Any::Unit),
        any::<bool>().prop_map(Any::Bool),
        any::<u8>().prop_map(Any::U8),
        any::<u16>().prop_map(Any::U16),
        any::<u32>().prop_map(Any::U32),
        any::<u64>().prop_map(Any::U64),
        any::<u128>().prop_map(Any::U128),
        any::<i8>().prop_map(Any::I8),
        any::<i16>().prop_map(Any::I16),
        any::<i32>().prop_map(Any::I32),
        any::<i64>().prop_map(Any::I64),
        any::<i128>().prop_map(Any::I128),
        any::<u32>().prop_map(|b| Any::F32(f32::from_bits(b))),
        any::<u64>().prop_map(|b| Any::F64(f64::from_bits(b))),
        any::<char>().prop_map(Any::Char),
        ".{0,40}".prop_map(Any::Str),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Any::Bytes),
        proptest::option::of(proptest::option::of(any::<u8>())).prop_map(Any::OptOpt),
        Just(Any::UnitStruct(Marker)),
        any::<u64>().prop_map(|n| Any::Newtype(Wrapper(n))),
    ]
}

fn any_value() -> impl Strategy<Value = Any> {
    leaf().prop_recursive(6, 256, 12, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..12).prop_map(Any::Seq),
            proptest::collection::btree_map(key(), inner.clone(), 0..8).prop_map(Any::Map),
            proptest::option::of(inner.clone().prop_map(Box::new)).prop_map(Any::Opt),
            (any::<u8>(), ".{0,8}", inner.clone()).prop_map(|(a, b, c)| Any::Tuple(
                a,
                b,
                Box::new(c)
            )),
            (".{0,8}", inner).prop_map(|(name, inner)| Any::Struct {
                name,
                inner: Box::new(inner)
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_generated_value_round_trips_exactly(v in any_value()) {
        for codec in CODECS {
            let bytes = codec.encode(&v).expect("encode");
            let back: Any = Codec::decode(&bytes).map_err(|e| TestCaseError::fail(format!("{codec:?}: {e}")))?;
            // Bit for bit: the re-encoding is the same bytes (NaN payloads included).
            prop_assert_eq!(codec.encode(&back).expect("re-encode"), bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn collections_of_any_size_round_trip(
        n in prop_oneof![0usize..16, 16usize..2_000, Just(100_000usize)],
        seed in any::<u64>(),
    ) {
        let small: Vec<u64> = (0..n as u64).map(|i| (i ^ seed) % 200).collect();
        round_trips(&small);
        let map: HashMap<String, u64> = small.iter().enumerate().map(|(i, v)| (format!("k{i}"), *v)).collect();
        round_trips(&map);
        let set: HashSet<u64> = small.iter().map(|v| v * 1_000_003).collect();
        round_trips(&set);
        let keyed: HashMap<(u32, u32), f64> = (0..n.min(5_000) as u32).map(|i| ((i, i / 2), f64::from(i) / 3.0)).collect();
        round_trips(&keyed);
        let text = "é".repeat(n);
        round_trips(&text);
    }
}

#[test]
fn values_that_lossy_formats_get_wrong_come_back_exactly() {
    round_trips(&Some(None::<u8>));
    round_trips(&Some(Some(None::<u8>)));
    round_trips(&vec![None, Some(None), Some(Some(()))]);
    round_trips(&Some(()));
    // Inside what serde reads through its buffer (untagged enums, `flatten`), too.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        x: Option<()>,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Inner(Inner),
        Other(u8),
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Flat {
        #[serde(flatten)]
        inner: Inner,
    }
    let back: Loose = convert(Codec::Cbor, &Loose::Inner(Inner { x: Some(()) })).expect("untagged");
    assert_eq!(back, Loose::Inner(Inner { x: Some(()) }));
    let back: Flat = convert(
        Codec::Cbor,
        &Flat {
            inner: Inner { x: Some(()) },
        },
    )
    .expect("flatten");
    assert_eq!(back.inner.x, Some(()));
    round_trips(&u128::MAX);
    round_trips(&i128::MIN);
    round_trips(&(i64::MIN as i128 - 1));
    round_trips_bits(&f64::NAN, |f| vec![f.to_bits()]);
    round_trips_bits(&f32::from_bits(0x7fc0_1234), |f| {
        vec![u64::from(f.to_bits())]
    });
    round_trips_bits(&-0.0f64, |f| vec![f.to_bits()]);
    round_trips(&BTreeSet::from(["a".to_string(), "b".to_string()]));
    round_trips(&std::time::Duration::new(5, 7));
    let nan = Codec::Cbor
        .encode(&f64::from_bits(0x7ff8_dead_beef_0001))
        .expect("encode");
    let back: f64 = Codec::decode(&nan).expect("decode");
    assert_eq!(back.to_bits(), 0x7ff8_dead_beef_0001);
}

/// serde's attributes that bincode cannot represent, all recorded by the default codec.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Attributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, u32>,
    kind: Tagged,
    either: Untagged,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Tagged {
    Card { last4: String },
    Cash,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Number(u64),
    Words(Vec<String>),
}

#[test]
fn serde_attributes_are_recorded_by_the_default_codec() {
    let v = Attributes {
        note: None,
        extra: BTreeMap::from([("a".into(), 1), ("b".into(), 2)]),
        kind: Tagged::Card {
            last4: "4242".into(),
        },
        either: Untagged::Words(vec!["x".into()]),
    };
    let back: Attributes = convert(Codec::Cbor, &v).expect("default codec");
    assert_eq!(back, v);
}

// ---------------------------------------------------------------------------------------
// Changed types: the default codec follows what keeps the value, and refuses the rest.

mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) struct Order {
        pub(crate) sku: String,
        pub(crate) qty: u32,
        pub(crate) status: Status,
        pub(crate) discontinued: bool,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) enum Status {
        Pending,
        Approved,
        Rejected { reason: String },
    }
}

mod v2 {
    use serde::{Deserialize, Serialize};

    /// A field added with a default, one removed (`discontinued`), `qty` widened, and
    /// a variant added in front.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Order {
        pub(crate) sku: String,
        pub(crate) qty: u64,
        pub(crate) status: Status,
        #[serde(default)]
        pub(crate) gift: bool,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) enum Status {
        Draft,
        Pending,
        Approved,
        Rejected { reason: String },
    }
}

fn order() -> v1::Order {
    v1::Order {
        sku: "tea".into(),
        qty: 7,
        status: v1::Status::Approved,
        discontinued: false,
    }
}

#[test]
fn compatible_changes_resume_with_the_recorded_values() {
    let back: v2::Order = convert(Codec::Cbor, &order()).expect("compatible");
    assert_eq!(
        back,
        v2::Order {
            sku: "tea".into(),
            qty: 7,
            status: v2::Status::Approved,
            gift: false,
        }
    );
    assert_eq!(convert::<_, i32>(Codec::Cbor, &7u32), Ok(7));
    assert_eq!(convert::<_, u8>(Codec::Cbor, &7u64), Ok(7));
    assert_eq!(convert::<_, i64>(Codec::Cbor, &-3i8), Ok(-3));
    assert_eq!(convert::<_, f64>(Codec::Cbor, &1.5f32), Ok(1.5));
    assert_eq!(convert::<_, f64>(Codec::Cbor, &3u32), Ok(3.0));
    assert_eq!(
        convert::<_, f32>(Codec::Cbor, &-16_777_216i64),
        Ok(-16_777_216.0)
    );
    assert_eq!(
        convert::<_, f64>(Codec::Cbor, &i64::MIN),
        Ok(-9_223_372_036_854_775_808.0)
    );
    assert_eq!(convert::<_, f64>(Codec::Cbor, &-1i8), Ok(-1.0));
    assert_eq!(convert::<_, f64>(Codec::Cbor, &0u8), Ok(0.0));
    assert_eq!(convert::<_, Option<u32>>(Codec::Cbor, &5u32), Ok(Some(5)));
    assert_eq!(
        convert::<_, std::collections::VecDeque<u8>>(Codec::Cbor, &vec![1u8, 2]),
        Ok([1u8, 2].into())
    );
    // A newtype around a field's type reads the plain value, and back.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Cents(u64);
    assert_eq!(convert::<_, Cents>(Codec::Cbor, &250u64), Ok(Cents(250)));
    assert_eq!(convert::<_, u64>(Codec::Cbor, &Cents(250)), Ok(250));
    // A field that became an `Option` reads the recorded value as `Some`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Later {
        sku: Option<String>,
        #[serde(default)]
        qty: Option<u64>,
    }
    assert_eq!(
        convert::<_, Later>(Codec::Cbor, &order()),
        Ok(Later {
            sku: Some("tea".into()),
            qty: Some(7)
        })
    );
    // bincode follows what keeps its bytes meaning the same value.
    assert_eq!(convert::<_, u64>(Codec::Bincode, &7u32), Ok(7));
}

#[test]
fn incompatible_changes_are_errors_that_say_where_never_other_values() {
    let cases: Vec<(Result<(), String>, &str)> = vec![
        (
            convert::<_, i32>(Codec::Cbor, &4_000_000_000u32).map(drop),
            "invalid value: integer `4000000000`, expected i32",
        ),
        (
            convert::<_, u8>(Codec::Cbor, &300u32).map(drop),
            "expected u8",
        ),
        (
            convert::<_, String>(Codec::Cbor, &7u32).map(drop),
            "invalid type: integer `7`, expected a string",
        ),
        (
            convert::<_, f32>(Codec::Cbor, &0.1f64).map(drop),
            "does not fit an f32 exactly",
        ),
        (
            convert::<_, f64>(Codec::Cbor, &(u64::MAX - 1)).map(drop),
            "does not fit a float exactly",
        ),
        (
            convert::<_, f32>(Codec::Cbor, &-16_777_217i64).map(drop),
            "the recorded integer -16777217 does not fit a float exactly",
        ),
        (
            convert::<_, f64>(Codec::Cbor, &(-(1i64 << 53) - 1)).map(drop),
            "does not fit a float exactly",
        ),
        (
            convert::<_, u32>(Codec::Cbor, &1.0f64).map(drop),
            "invalid type: floating point",
        ),
    ];
    for (result, expected) in cases {
        let err = result.expect_err(expected);
        assert!(err.contains(expected), "{err}");
    }

    // A recorded variant that no longer exists, deep in a value: the error says where.
    #[derive(Debug, Serialize, Deserialize)]
    struct Order3 {
        sku: String,
        qty: u32,
        status: Status3,
    }
    #[derive(Debug, Serialize, Deserialize)]
    enum Status3 {
        Pending,
        Rejected { reason: String },
    }
    let err = convert::<_, Vec<Order3>>(Codec::Cbor, &vec![order()]).expect_err("removed");
    assert!(
        err.contains("unknown variant `Approved`, expected `Pending` or `Rejected`"),
        "{err}"
    );
    assert!(err.contains("at `[0].status`"), "{err}");

    // A field whose type changed.
    #[derive(Debug, Serialize, Deserialize)]
    struct Order4 {
        sku: String,
        qty: String,
    }
    let err = convert::<_, Order4>(Codec::Cbor, &order()).expect_err("changed");
    assert!(
        err.contains("invalid type: integer `7`, expected a string (at `.qty`)"),
        "{err}"
    );

    // A field added without a default.
    #[derive(Debug, Serialize, Deserialize)]
    struct Order5 {
        sku: String,
        price: u32,
    }
    let err = convert::<_, Order5>(Codec::Cbor, &order()).expect_err("missing");
    assert!(err.contains("missing field `price`"), "{err}");

    // A tuple that lost an element does not drop it silently.
    let err = convert::<_, (u8, u8)>(Codec::Cbor, &(1u8, 2u8, 3u8)).expect_err("shorter");
    assert!(err.contains("the recorded array has 3 elements"), "{err}");
}

#[test]
fn bincode_refuses_every_change_that_would_read_another_value() {
    // The defects the shape fingerprint exists for: each decoded "successfully" before.
    let err = convert::<_, i32>(Codec::Bincode, &7u32).expect_err("7u32 read as -4");
    assert!(err.contains("another shape"), "{err}");
    #[derive(Debug, Serialize, Deserialize)]
    enum Before {
        Pending,
        Approved,
    }
    #[derive(Debug, Serialize, Deserialize)]
    enum After {
        Draft,
        Pending,
        Approved,
    }
    let err = convert::<_, After>(Codec::Bincode, &Before::Pending).expect_err("Pending as Draft");
    assert!(err.contains("another shape"), "{err}");
    // A variant added at the end keeps every recorded variant's place: that is fine.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Appended {
        Pending,
        Approved,
        Cancelled,
    }
    assert_eq!(
        convert::<_, Appended>(Codec::Bincode, &Before::Approved),
        Ok(Appended::Approved)
    );
    // A field added, and two fields swapped.
    assert!(convert::<_, v2::Order>(Codec::Bincode, &order()).is_err());
    #[derive(Debug, Serialize, Deserialize)]
    struct A {
        x: u32,
        y: u32,
    }
    #[derive(Debug, Serialize, Deserialize)]
    struct B {
        y: u32,
        x: u32,
    }
    let err = convert::<_, B>(Codec::Bincode, &A { x: 1, y: 2 }).expect_err("swapped");
    assert!(err.contains("another shape"), "{err}");
    // bincode writes 8-bit integers as raw bytes and wider ones as varints: the byte of
    // `1i8` read as an i16 is -1, and `251u8` read as a u16 swallows the next field.
    #[derive(Debug, Serialize, Deserialize)]
    struct Narrow {
        a: u8,
        b: u16,
    }
    #[derive(Debug, Serialize, Deserialize)]
    struct Wide {
        a: u16,
        b: u16,
    }
    let err =
        convert::<_, Wide>(Codec::Bincode, &Narrow { a: 251, b: 300 }).expect_err("u8 as u16");
    assert!(err.contains("another shape"), "{err}");
    let err = convert::<_, i16>(Codec::Bincode, &1i8).expect_err("i8 as i16");
    assert!(err.contains("another shape"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Hostile rows in the default format.

fn cbor(body: &[u8]) -> Vec<u8> {
    let mut row = vec![2u8];
    row.extend_from_slice(body);
    row
}

#[test]
fn hostile_cbor_rows_are_errors_not_allocations_or_stack_overflows() {
    let huge = |head: u8| {
        let mut b = vec![head];
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        cbor(&b)
    };
    for err in [
        Codec::decode::<String>(&huge(0x7b)).expect_err("text"),
        Codec::decode::<Vec<u8>>(&huge(0x5b)).expect_err("bytes"),
        Codec::decode::<Vec<u64>>(&huge(0x9b)).expect_err("array"),
        Codec::decode::<HashMap<u64, u64>>(&huge(0xbb)).expect_err("map"),
    ] {
        assert!(err.is_malformed(), "{err}");
        assert!(err.to_string().contains("more than the"), "{err}");
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum Tree {
        Leaf(u32),
        Node(Vec<Tree>),
    }
    // 200,000 levels of `{"Node": [...]}`: refused at the depth limit, before even a
    // 1 MiB stack runs out in a debug build (tokio's worker threads have 2 MiB).
    let mut deep = Vec::new();
    for _ in 0..200_000 {
        deep.extend_from_slice(&[0xa1, 0x64]);
        deep.extend_from_slice(b"Node");
        deep.push(0x81);
    }
    let err = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || Codec::decode::<Tree>(&cbor(&deep)).expect_err("deep"))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(err.to_string().contains("nested more than"), "{err}");

    // Untagged enums buffer their input generically: the same limit holds there.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Many(Vec<Loose>),
        One(u32),
    }
    let deep = [vec![0x81u8; 100_000], vec![0x01]].concat();
    let err = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || Codec::decode::<Loose>(&cbor(&deep)).expect_err("deep"))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(err.to_string().contains("nested more than"), "{err}");

    // The same under bincode, which reads as deeply as the type asks: a run of `1`s is
    // `Node(Vec of one Node(...))` for ever.
    let deep = [vec![1u8; 300_000], vec![0, 0]].concat();
    let err = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || Codec::decode::<Tree>(&[vec![1u8], deep].concat()).expect_err("deep"))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(err.to_string().contains("nested more than"), "{err}");

    // Some-markers chained without end.
    let chain = [vec![0xc6u8; 100_000], vec![0xf6]].concat();
    let err = Codec::decode::<Option<u32>>(&cbor(&chain)).expect_err("chain");
    assert!(!err.to_string().is_empty());
}

#[test]
fn writing_a_value_nested_beyond_the_limit_is_refused_up_front() {
    let mut v = serde_json_like_nesting(200);
    let err = Codec::Cbor.encode(&v).expect_err("too deep");
    assert!(
        err.to_string().contains("nested more than 128 levels"),
        "{err}"
    );
    // 128 arrays, each in a newtype: newtypes are counted apart (see below).
    v = serde_json_like_nesting(127);
    for codec in CODECS {
        let back: Nest = Codec::decode(&codec.encode(&v).expect("fits")).expect("decodes");
        assert_eq!(back, v);
    }
    v = serde_json_like_nesting(128);
    let err = Codec::Cbor.encode(&v).expect_err("one level too deep");
    assert!(err.to_string().contains("nested more than"), "{err}");
}

/// An expression tree whose nodes are newtypes, as parsers write them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Expr(Box<ExprKind>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ExprKind {
    Lit(i64),
    Add(Expr, Expr),
    Neg(Expr),
}

#[test]
fn recursive_values_record_as_deep_as_their_arrays_and_maps_allow() {
    // A left-deep sum of 60 terms: 60 levels of `{"Add": [..]}` (two levels each, up
    // to the 128 the journal records) under 60 newtypes, which count apart.
    let mut e = Expr(Box::new(ExprKind::Lit(0)));
    for i in 1..60 {
        let lit = Expr(Box::new(ExprKind::Lit(i)));
        e = Expr(Box::new(ExprKind::Add(e, lit)));
    }
    let neg = Expr(Box::new(ExprKind::Neg(e)));
    for codec in CODECS {
        let back: Expr = Codec::decode(&codec.encode(&neg).expect("records")).expect("decodes");
        assert_eq!(back, neg, "{codec:?}");
    }
}

/// A chain of links, each of which may hold the next: a newtype around an `Option`,
/// neither of which reads a byte of its own when the `Option` is a `Some`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Link(Option<Box<Link>>);

/// The same chain without the newtype: `transparent` reads the field in its place, so
/// only the bare `Some` is left between levels.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
struct Bare {
    next: Option<Box<Bare>>,
}

/// A type no value has (each holds another), which a decoder can still be asked for:
/// newtypes all the way down.
#[derive(Debug, Serialize, Deserialize)]
struct Endless(Box<Endless>);

fn chain(n: usize) -> Link {
    let mut l = Link(None);
    for _ in 0..n {
        l = Link(Some(Box::new(l)));
    }
    l
}

#[test]
fn a_short_row_cannot_recurse_through_levels_that_read_no_bytes() {
    // Two bytes (format, then `0`): read as a `Link`, each level is a newtype and a bare
    // `Some` around the next, and nothing is ever consumed.
    let err = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            [
                Codec::decode::<Link>(&cbor(&[0x00])).expect_err("refused"),
                Codec::decode::<Bare>(&cbor(&[0x00])).expect_err("refused"),
                Codec::decode::<Endless>(&cbor(&[0x00])).expect_err("refused"),
                // The same under bincode (a legacy row: format byte 1), which reads as
                // deep as the type asks.
                Codec::decode::<Endless>(&[0x01, 0x00]).expect_err("refused"),
            ]
        })
        .expect("thread")
        .join()
        .expect("no stack overflow");
    for err in err {
        assert!(err.to_string().contains("nested more than"), "{err}");
    }
    // Chains the limits allow (a newtype and a `Some` a link) round-trip under both
    // codecs; longer ones are refused, by CBOR when written.
    for codec in CODECS {
        let ok = chain(120);
        let back: Link = Codec::decode(&codec.encode(&ok).expect("fits")).expect("decodes");
        assert_eq!(back, ok, "{codec:?}");
    }
    let err = Codec::Cbor.encode(&chain(200)).expect_err("too deep");
    assert!(err.to_string().contains("nested more than"), "{err}");
    let bytes = Codec::Bincode
        .encode(&chain(200))
        .expect("bincode writes it");
    let err = Codec::decode::<Link>(&bytes).expect_err("too deep");
    assert!(err.to_string().contains("nested more than"), "{err}");
    // Arrays at their limit with newtypes and `Some`s at theirs, on a small stack: the
    // two limits together still leave it room.
    #[derive(Debug, Serialize, Deserialize)]
    struct Both(Vec<Option<Box<Both>>>);
    let row = cbor(&[vec![0x81u8; 200], vec![0x80]].concat());
    let err = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || Codec::decode::<Both>(&row).expect_err("refused"))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(err.to_string().contains("nested more than"), "{err}");
}

#[test]
fn bincode_refuses_variants_reordered_inside_collections() {
    // bincode writes a variant as its index. Recorded `[Buy, Sell]` read after the enum
    // became `{ Sell, Buy }` must not come back as `[Sell, Buy]`: swapped variants that
    // occur equally often once summed to the same shape.
    mod before {
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        pub(super) enum Side {
            Buy,
            Sell,
        }
    }
    mod after {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        pub(super) enum Side {
            Sell,
            Buy,
        }
    }
    use before::Side::{Buy, Sell};
    let err = convert::<_, Vec<after::Side>>(Codec::Bincode, &vec![Buy, Sell])
        .expect_err("[Buy, Sell] read as [Sell, Buy]");
    assert!(err.contains("another shape"), "{err}");
    let book: BTreeMap<String, before::Side> = [("alice".into(), Buy), ("bob".into(), Sell)].into();
    let err = convert::<_, BTreeMap<String, after::Side>>(Codec::Bincode, &book)
        .expect_err("swapped in a map");
    assert!(err.contains("another shape"), "{err}");
    // The default codec records names: the same change reads the same variants.
    assert_eq!(
        convert::<_, Vec<after::Side>>(Codec::Cbor, &vec![Buy, Sell, Sell]),
        Ok(vec![after::Side::Buy, after::Side::Sell, after::Side::Sell])
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Nest(Vec<Nest>);

fn serde_json_like_nesting(depth: usize) -> Nest {
    let mut n = Nest(Vec::new());
    for _ in 0..depth {
        n = Nest(vec![n]);
    }
    n
}

// ---------------------------------------------------------------------------------------
// Argument fingerprints: what replay compares a step's arguments by.

fn fp<T: Serialize + ?Sized>(v: &T) -> durable_runtime::Fingerprint {
    durable_runtime::Fingerprint::of(v).expect("fingerprint")
}

#[test]
fn fingerprints_tell_apart_arguments_that_mean_different_things() {
    // A patch: `None` leaves a field alone, `Some(None)` clears it.
    assert_ne!(fp(&None::<Option<String>>), fp(&Some(None::<String>)));
    assert_ne!(fp(&Some(None::<u32>)), fp(&Some(Some(0u32))));
    // A filter: no list means "all", an empty list "none"; likewise for a zero, a
    // `false` or an empty string that is there, against one that is not.
    #[derive(Serialize, Default)]
    struct Filter {
        ids: Option<Vec<u64>>,
        limit: Option<u32>,
        dry_run: Option<bool>,
        prefix: Option<String>,
    }
    let all = fp(&Filter::default());
    for some in [
        Filter {
            ids: Some(vec![]),
            ..Filter::default()
        },
        Filter {
            limit: Some(0),
            ..Filter::default()
        },
        Filter {
            dry_run: Some(false),
            ..Filter::default()
        },
        Filter {
            prefix: Some(String::new()),
            ..Filter::default()
        },
    ] {
        assert_ne!(fp(&some), all);
    }
    // Byte strings are read in order, as strings are.
    #[derive(Serialize)]
    struct Payload(#[serde(with = "bytes")] Vec<u8>);
    assert_ne!(
        fp(&Payload(b"transfer 10 to bob".to_vec())),
        fp(&Payload(b"transfer 01 to bob".to_vec()))
    );
    assert_ne!(fp("transfer 10 to bob"), fp("transfer 01 to bob"));
}

#[test]
fn fingerprints_follow_changes_that_keep_a_value() {
    // Widening a float, or a character becoming a string, keeps the argument.
    #[derive(Serialize)]
    struct Narrow {
        ratio: f32,
        grade: char,
    }
    #[derive(Serialize)]
    struct Wide {
        ratio: f64,
        grade: String,
    }
    assert_eq!(
        fp(&Narrow {
            ratio: 1.5,
            grade: 'A'
        }),
        fp(&Wide {
            ratio: 1.5,
            grade: "A".into()
        })
    );
    // A field that became an `Option` holds the same; one added as `None` is not there.
    #[derive(Serialize)]
    struct Before {
        sku: String,
    }
    #[derive(Serialize)]
    struct After {
        sku: Option<String>,
        note: Option<String>,
    }
    assert_eq!(
        fp(&Before { sku: "tea".into() }),
        fp(&After {
            sku: Some("tea".into()),
            note: None
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sequences_compare_as_collections_and_byte_strings_in_order(
        bytes in proptest::collection::vec(any::<u8>(), 2..4_096),
        i in any::<proptest::sample::Index>(),
        j in any::<proptest::sample::Index>(),
    ) {
        let (i, j) = (i.index(bytes.len()), j.index(bytes.len()));
        prop_assume!(bytes[i] != bytes[j]);
        let mut swapped = bytes.clone();
        swapped.swap(i, j);
        // A set is a sequence to serde, in whatever order it iterates (a `HashSet` of
        // ids of any width, a newtype of a byte, an enum written as one): the same
        // elements in another order are the same argument.
        prop_assert_eq!(fp(&bytes), fp(&swapped));
        let ids: Vec<Wrapper> = bytes.iter().map(|b| Wrapper(u64::from(*b))).collect();
        let swapped_ids: Vec<Wrapper> = swapped.iter().map(|b| Wrapper(u64::from(*b))).collect();
        prop_assert_eq!(fp(&ids), fp(&swapped_ids));
        // A byte string is not a set.
        #[derive(Serialize)]
        struct Payload<'a>(#[serde(with = "bytes")] &'a [u8]);
        prop_assert_ne!(fp(&Payload(&bytes)), fp(&Payload(&swapped)));
        // Nor is an element added or taken away.
        prop_assert_ne!(fp(&bytes), fp(&bytes[1..]));
    }

    #[test]
    fn nested_options_keep_their_levels(v in any::<Option<Option<Option<u16>>>>(), w in any::<Option<Option<Option<u16>>>>()) {
        // Equal fingerprints only for equal values (a 64-bit hash: a collision among
        // these is not a thing a test run meets).
        prop_assert_eq!(fp(&v) == fp(&w), v == w);
    }
}
