//! Generated values of many shapes and sizes (0 to 100,000 elements) go through every
//! place the journal records one: a workflow's input, a step's argument and output, a
//! message, and the workflow's output; then the run is replayed from the journal. Every
//! value comes back as it went in, the first time and on replay.
//!
//! Before the default codec carried names and lengths were checked against the row, 21
//! of 28 such shapes failed to record at all (`a length prefix claims more bytes than
//! the row holds`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use durable_runtime::{Durability, Runtime, WorkflowCall, recv, step, workflow};
use proptest::prelude::*;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Element counts: mostly small, sometimes large, and the largest, 100,000.
fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..8,
        3 => 8usize..1_000,
        1 => 1_000usize..20_000,
        1 => Just(100_000usize),
    ]
}

/// A cheap deterministic stream of numbers from a seed (splitmix64).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn small(&mut self) -> u64 {
        self.next() % 200
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn word(&mut self) -> String {
        let len = (self.next() % 12) as usize;
        (0..len)
            .map(|_| char::from(b'a' + (self.next() % 26) as u8))
            .collect()
    }
}

fn equal<T: PartialEq>(a: &T, b: &T) -> bool {
    a == b
}

/// Floats bit for bit (`NaN != NaN` for `==`). Takes `&Vec` to fit the shape's
/// comparison, `fn(&T, &T)`.
#[allow(clippy::ptr_arg)]
fn same_bits(a: &Vec<f64>, b: &Vec<f64>) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn same_bits_by_key(a: &HashMap<(u32, u32), f64>, b: &HashMap<(u32, u32), f64>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| w.to_bits() == v.to_bits()))
}

static IDS: AtomicU64 = AtomicU64::new(0);

async fn open(path: &Path) -> Runtime {
    Runtime::builder(path)
        .durability(Durability::Off)
        .open()
        .await
        .expect("open")
}

/// Runs `call` (a workflow taking `value` and expecting it as a message too), then
/// replays it from the journal; both results must hold the value, unchanged.
fn check<T>(
    call: impl Fn(T) -> WorkflowCall<(T, Option<T>)>,
    value: T,
    same: fn(&T, &T) -> bool,
) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + Clone + Send + std::fmt::Debug + 'static,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let id = format!("v{}", IDS.fetch_add(1, Ordering::Relaxed));
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let describe = |v: &T| {
        let s = format!("{v:?}");
        s.chars().take(200).collect::<String>()
    };
    tokio.block_on(async {
        let rt = open(&path).await;
        rt.send(&id, "value", &value).await.map_err(fail)?;
        let h = rt
            .start_with_id(&id, call(value.clone()))
            .await
            .map_err(fail)?;
        let (stepped, received) = h.result().await.map_err(fail)?;
        prop_assert!(
            same(&stepped, &value),
            "step output {} != {}",
            describe(&stepped),
            describe(&value)
        );
        let received = received.ok_or_else(|| fail("no message"))?;
        prop_assert!(
            same(&received, &value),
            "message {} != {}",
            describe(&received),
            describe(&value)
        );
        rt.close().await.map_err(fail)?;

        // Replayed from the journal: input, step output and message decode again.
        common::make_pending(&path, &id);
        let rt = open(&path).await;
        let (stepped, received) = rt
            .handle::<(T, Option<T>)>(&id)
            .await
            .map_err(fail)?
            .result()
            .await
            .map_err(fail)?;
        prop_assert!(same(&stepped, &value), "replayed step output differs");
        prop_assert!(
            received.is_some_and(|r| same(&r, &value)),
            "replayed message differs"
        );
        rt.close().await.map_err(fail)?;
        Ok(())
    })
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// One shape: a step that returns its argument, a workflow that passes its input
/// through the step and receives the same value as a message, and a property test.
macro_rules! shape {
    ($test:ident, $name:literal, $ty:ty, |$n:ident, $g:ident| $make:expr) => {
        shape!($test, $name, $ty, |$n, $g| $make, equal::<$ty>);
    };
    ($test:ident, $name:literal, $ty:ty, |$n:ident, $g:ident| $make:expr, $same:expr) => {
        mod $test {
            use super::*;

            #[step]
            async fn echo(v: $ty) -> $ty {
                v
            }

            #[workflow(name = $name)]
            async fn through(v: $ty) -> ($ty, Option<$ty>) {
                let stepped = echo(v).await;
                let received = recv::<$ty>("value", Duration::from_secs(30))
                    .await
                    .ok()
                    .flatten();
                (stepped, received)
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(6))]

                #[test]
                fn round_trips(n in sizes(), seed in any::<u64>()) {
                    let $n: usize = n;
                    let mut $g = Gen(seed);
                    let value: $ty = $make;
                    check(through, value, $same)?;
                }
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    qty: u32,
    price_cents: u64,
    note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Created,
    Paid(u64),
    Shipped { carrier: String, days: u8 },
    Split(u16, i16),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
enum Payment {
    Card { last4: String },
    Cash,
}

/// serde's attributes that need a self-describing format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Attributed {
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, u32>,
    payment: Payment,
    #[serde(default)]
    gift: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tree {
    label: String,
    children: Vec<Tree>,
}

fn tree(g: &mut Gen, budget: &mut usize, depth: u32) -> Tree {
    let mut children = Vec::new();
    while *budget > 0 && depth < 30 && !g.one_in(3) {
        *budget -= 1;
        children.push(tree(g, budget, depth + 1));
    }
    Tree {
        label: g.word(),
        children,
    }
}

shape!(vec_of_small_u64, "vec_of_small_u64", Vec<u64>, |n, g| (0
    ..n)
    .map(|_| g.small())
    .collect());
shape!(vec_of_any_u64, "vec_of_any_u64", Vec<u64>, |n, g| (0..n)
    .map(|_| g.next())
    .collect());
shape!(vec_of_i64, "vec_of_i64", Vec<i64>, |n, g| (0..n)
    .map(|_| g.next() as i64)
    .collect());
shape!(vec_of_structs, "vec_of_structs", Vec<Line>, |n, g| (0..n)
    .map(|i| Line {
        sku: format!("sku-{i}"),
        qty: (g.small() % 9) as u32,
        price_cents: g.next() % 100_000,
        note: g.one_in(3).then(|| g.word()),
    })
    .collect());
shape!(hash_map_of_counts, "hash_map_of_counts", HashMap<String, u64>, |n, g| (0..n)
    .map(|i| (format!("key-{i}"), g.small()))
    .collect());
shape!(btree_map_of_lists, "btree_map_of_lists", BTreeMap<u64, Vec<String>>, |n, g| (0..n / 4)
    .map(|i| (i as u64, (0..g.small() % 5).map(|_| g.word()).collect()))
    .collect());
shape!(
    map_with_tuple_keys_and_floats,
    "map_with_tuple_keys_and_floats",
    HashMap<(u32, u32), f64>,
    |n, g| (0..n)
        .map(|i| ((i as u32, (g.next() % 7) as u32), f64::from_bits(g.next())))
        .collect(),
    same_bits_by_key
);
shape!(
    vec_of_options,
    "vec_of_options",
    Vec<Option<i32>>,
    |n, g| (0..n)
        .map(|_| (!g.one_in(4)).then(|| g.next() as i32))
        .collect()
);
shape!(long_string, "long_string", String, |n, g| (0..n)
    .map(|_| char::from_u32((g.next() % 0x2_0000) as u32).unwrap_or('é'))
    .collect());
shape!(
    bytes_as_a_sequence,
    "bytes_as_a_sequence",
    Vec<u8>,
    |n, g| (0..n).map(|_| g.next() as u8).collect()
);
shape!(vec_of_enums, "vec_of_enums", Vec<Event>, |n, g| (0..n)
    .map(|_| match g.small() % 4 {
        0 => Event::Created,
        1 => Event::Paid(g.next()),
        2 => Event::Shipped {
            carrier: g.word(),
            days: g.small() as u8,
        },
        _ => Event::Split(g.next() as u16, g.next() as i16),
    })
    .collect());
shape!(
    vec_of_tuples,
    "vec_of_tuples",
    Vec<(u32, String, bool)>,
    |n, g| (0..n)
        .map(|_| (g.next() as u32, g.word(), g.one_in(2)))
        .collect()
);
shape!(
    hash_set_of_strings,
    "hash_set_of_strings",
    HashSet<String>,
    |n, g| (0..n).map(|i| format!("{i}-{}", g.word())).collect()
);
shape!(
    floats_with_nan_and_infinities,
    "floats_with_nan_and_infinities",
    Vec<f64>,
    |n, g| (0..n)
        .map(|i| match i % 5 {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => -0.0,
            _ => f64::from_bits(g.next()),
        })
        .collect(),
    same_bits
);
shape!(vec_of_u128, "vec_of_u128", Vec<u128>, |n, g| (0..n)
    .map(|_| u128::from(g.next()) << 64 | u128::from(g.next()))
    .collect());
shape!(vec_of_i128, "vec_of_i128", Vec<i128>, |n, g| (0..n)
    .map(|_| (i128::from(g.next()) << 64 | i128::from(g.next())).wrapping_sub(i128::MAX / 2))
    .collect());
shape!(nested_vecs, "nested_vecs", Vec<Vec<u16>>, |n, g| (0..n
    / 10)
    .map(|_| (0..g.small() % 20).map(|_| g.next() as u16).collect())
    .collect());
shape!(
    nested_options,
    "nested_options",
    Vec<Option<Option<u8>>>,
    |n, g| (0..n)
        .map(|_| match g.small() % 3 {
            0 => None,
            1 => Some(None),
            _ => Some(Some(g.next() as u8)),
        })
        .collect()
);
shape!(chars, "chars", Vec<char>, |n, g| (0..n)
    .map(|_| char::from_u32((g.next() % 0x11_0000) as u32).unwrap_or('x'))
    .collect());
shape!(
    serde_attributes,
    "serde_attributes",
    Vec<Attributed>,
    |n, g| (0..n / 4)
        .map(|_| Attributed {
            coupon: g.one_in(2).then(|| g.word()),
            extra: (0..g.small() % 4)
                .map(|i| (format!("x{i}"), g.small() as u32))
                .collect(),
            payment: if g.one_in(2) {
                Payment::Cash
            } else {
                Payment::Card { last4: g.word() }
            },
            gift: g.one_in(2),
        })
        .collect()
);
shape!(durations, "durations", Vec<Duration>, |n, g| (0..n)
    .map(|_| Duration::new(g.next() % 1_000_000, (g.next() % 1_000_000_000) as u32))
    .collect());
shape!(
    btree_set_of_i16,
    "btree_set_of_i16",
    BTreeSet<i16>,
    |n, g| (0..n).map(|_| g.next() as i16).collect()
);
shape!(
    zero_sized_elements,
    "zero_sized_elements",
    Vec<()>,
    |n, g| {
        let _ = g.next();
        vec![(); n]
    }
);
shape!(recursive_tree, "recursive_tree", Tree, |n, g| {
    let mut budget = n.min(20_000);
    tree(&mut g, &mut budget, 0)
});
shape!(
    unit_and_tuple_structs,
    "unit_and_tuple_structs",
    Vec<(Marker, Cents)>,
    |n, g| (0..n).map(|_| (Marker, Cents(g.next()))).collect()
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cents(u64);
