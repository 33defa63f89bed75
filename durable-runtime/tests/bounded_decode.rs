//! Decoding a journal row never allocates in proportion to what a corrupt or hostile
//! length prefix claims, in any of the journal's formats. A counting allocator records
//! the largest single allocation made while decoding short rows that claim `u64::MAX`
//! elements; claims over zero-sized elements, which take no bytes, must fail rather than
//! decode for ever; nesting deep enough to exhaust a stack is refused.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use durable_runtime::Codec;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Only allocations made by the decoding thread count (tests run in parallel).
    static MEASURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// SAFETY: forwards to the system allocator; only records sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.with(std::cell::Cell::get) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A bincode body claiming `u64::MAX` (varint 253 = a u64 follows).
fn hostile_row() -> Vec<u8> {
    let mut row = vec![253u8];
    row.extend_from_slice(&u64::MAX.to_le_bytes());
    row
}

/// `body` as a journal value of the legacy (unguarded) bincode format, the one a
/// hostile body is most dangerous in: nothing checks it but the decoder.
fn legacy(body: &[u8]) -> Vec<u8> {
    let mut row = vec![1u8];
    row.extend_from_slice(body);
    row
}

fn largest_allocation_decoding<T: serde::Serialize + serde::de::DeserializeOwned>(
    body: &[u8],
) -> usize {
    let row = legacy(body);
    LARGEST.store(0, Ordering::Relaxed);
    MEASURING.with(|m| m.set(true));
    let result = Codec::decode::<T>(&row);
    MEASURING.with(|m| m.set(false));
    let largest = LARGEST.load(Ordering::Relaxed);
    println!(
        "{}: largest allocation {largest} bytes",
        std::any::type_name::<T>()
    );
    assert!(result.is_err(), "a hostile row decoded");
    largest
}

#[test]
fn strings_allocate_at_most_the_decode_limit_of_the_row() {
    let row = hostile_row();
    // Rows up to 1 KiB are decoded with a 1 KiB limit: the claim is refused before any
    // buffer is allocated for it.
    assert!(largest_allocation_decoding::<String>(&row) <= 1024);
    assert!(
        largest_allocation_decoding::<(u32, String)>(&[
            1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
        ]) <= 1024
    );
}

#[test]
fn sequences_and_maps_reserve_no_more_elements_than_the_row_has_bytes() {
    let row = hostile_row();
    // A 9-byte row holds at most 9 elements: the reservation is sized for that, not for
    // the claimed u64::MAX (serde alone would reserve up to 1 MiB, 2 MiB for a map).
    let nested = [1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let cases = [
        (largest_allocation_decoding::<Vec<u8>>(&row), row.len(), 1),
        (largest_allocation_decoding::<Vec<u64>>(&row), row.len(), 8),
        (
            largest_allocation_decoding::<Vec<String>>(&row),
            row.len(),
            24,
        ),
        (
            largest_allocation_decoding::<Vec<Vec<u64>>>(&nested),
            nested.len(),
            24,
        ),
        (
            largest_allocation_decoding::<Option<Vec<u64>>>(&nested),
            nested.len(),
            8,
        ),
    ];
    for (largest, row_len, element) in cases {
        // Elements for every byte of the row, or an error message's worth of bytes.
        let bound = (row_len * element).max(512);
        assert!(largest <= bound, "largest allocation {largest} > {bound}");
    }
    // A map's table has a fixed overhead per bucket on top of the entries.
    let map = largest_allocation_decoding::<HashMap<u64, u64>>(&row);
    assert!(map <= 1024, "largest allocation {map}");
}

#[test]
fn a_huge_length_over_zero_sized_elements_is_an_error_not_a_hang() {
    let row = hostile_row();
    // `()` takes no bytes: without a count, u64::MAX of them would decode for ever.
    let err = Codec::decode::<Vec<()>>(&legacy(&row)).expect_err("refused");
    assert!(
        err.to_string().contains("more than a 9-byte row can hold"),
        "{err}"
    );
    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    struct Marker;
    assert!(Codec::decode::<Vec<Marker>>(&legacy(&row)).is_err());
    assert!(Codec::decode::<HashMap<(), ()>>(&legacy(&row)).is_err());
    assert!(
        Codec::decode::<Vec<Vec<()>>>(&legacy(&[
            1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
        ]))
        .is_err()
    );
    // Honest zero-sized sequences still decode, in every format.
    for codec in [Codec::Cbor, Codec::Bincode] {
        let thousand = codec.encode(&vec![(); 1000]).expect("encode");
        assert_eq!(
            Codec::decode::<Vec<()>>(&thousand).expect("decode").len(),
            1000
        );
    }
}

// ---------------------------------------------------------------------------------------
// Corrupt rows fed to recovery (property test).

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use durable_runtime::{Error, Location, Runtime, StoreErrorKind, step, workflow};
use proptest::prelude::*;

#[step]
async fn load(n: u8) -> (Vec<u8>, String) {
    ((0..n).collect(), format!("loaded {n} bytes"))
}

#[step]
async fn after(len: usize) -> usize {
    len
}

#[workflow]
async fn loads(n: u8) -> usize {
    let (bytes, label) = load(n).await;
    after(bytes.len() + label.len()).await
}

/// A journal holding workflow `w` as pending, with steps 1 (`load`) and 2 recorded by
/// `codec`: made once per codec, copied for every case.
fn template(codec: Codec) -> &'static Path {
    static CBOR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    static BINCODE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let slot = match codec {
        Codec::Bincode => &BINCODE,
        _ => &CBOR,
    };
    &slot
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("template.db");
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio");
            tokio.block_on(async {
                let rt = Runtime::builder(&path)
                    .codec(codec)
                    .open()
                    .await
                    .expect("open");
                let h = rt.start_with_id("w", loads(40)).await.expect("start");
                assert_eq!(h.result().await.expect("run"), 40 + 15);
            });
            drop(tokio);
            common::make_pending(&path, "w");
            let conn = rusqlite::Connection::open(&path).expect("open");
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .expect("checkpoint");
            (dir, path)
        })
        .1
}

/// How a row is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// The row replaced by random bytes.
    Random(Vec<u8>),
    /// The row cut short.
    Truncate(usize),
    /// One bit flipped.
    Flip(usize, u8),
    /// The first length prefix replaced by a huge one (CBOR's 9-byte array head).
    HugeLength(u64),
}

impl Damage {
    fn apply(&self, row: &[u8]) -> Vec<u8> {
        match self {
            Damage::Random(bytes) => bytes.clone(),
            Damage::Truncate(n) => row[..n % row.len()].to_vec(),
            Damage::Flip(i, bit) => {
                let mut row = row.to_vec();
                let i = i % row.len();
                row[i] ^= 1 << (bit % 8);
                row
            }
            Damage::HugeLength(n) => {
                // The format byte, then an array head claiming `n` elements where the
                // value's own head was.
                let mut out = vec![row[0], 0x9b];
                out.extend_from_slice(&n.to_be_bytes());
                out.extend_from_slice(&row[2..]);
                out
            }
        }
    }
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..96).prop_map(Damage::Random),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
        (1u64 << 40..=u64::MAX).prop_map(Damage::HugeLength),
    ]
}

/// Copies the template, damages step 1's row (keeping or dropping its checksum), and
/// resumes the workflow: returns the damaged row and what resuming it returned.
fn resume_damaged(
    codec: Codec,
    damage: &Damage,
    keep_checksum: bool,
) -> (Vec<u8>, Vec<u8>, Result<usize, Error>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    std::fs::copy(template(codec), &path).expect("copy");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let row: Vec<u8> = conn
        .query_row(
            "SELECT output FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 'w') AND path = '1'",
            [],
            |r| r.get(0),
        )
        .expect("step 1");
    let damaged = damage.apply(&row);
    let checksum = if keep_checksum { "crc32" } else { "NULL" };
    conn.execute(
        &format!("UPDATE durable_steps SET output = ?1, crc32 = {checksum} WHERE run = (SELECT run FROM durable_workflows WHERE id = 'w') AND path = '1'"),
        [&damaged],
    )
    .expect("damage");
    drop(conn);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let result = tokio.block_on(async {
        let rt = Runtime::open(&path).await?;
        rt.start_with_id("w", loads(40)).await?.result().await
    });
    (row, damaged, result)
}

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Cbor), Just(Codec::Bincode)]
}

/// An error message says what happened in durable's words: not a dependency's type
/// names or debug output.
fn assert_in_our_words(text: &str) {
    for foreign in [
        "Conversion error",
        "UnexpectedEnd",
        "Io(",
        "InvalidDataRead",
        "Syntax(",
        "Semantic(",
        "{ additional",
    ] {
        assert!(!text.contains(foreign), "`{foreign}` in: {text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// With its checksum, any damage is reported as damage: a clear error naming the
    /// workflow and the step, and the step's body does not run again.
    #[test]
    fn a_damaged_row_with_its_checksum_is_always_a_clear_error(damage in damage(), codec in codec()) {
        let (row, damaged, result) = resume_damaged(codec, &damage, true);
        prop_assume!(damaged != row);
        let err = result.expect_err("a damaged row must not replay");
        let text = err.to_string();
        prop_assert!(
            matches!(&err, Error::Store(e) if e.kind() == StoreErrorKind::Invariant),
            "{err:?}"
        );
        prop_assert!(
            text.contains("the recorded result of step 1 of workflow w does not match its checksum"),
            "{text}"
        );
        assert_in_our_words(&text);
    }

    /// Without a checksum (a row from schema 1), the decoder is the last line: it never
    /// panics, never allocates more than the row could hold, and either rejects the row
    /// with a clear error naming it or decodes a value the type allows.
    #[test]
    fn a_damaged_row_without_a_checksum_never_panics_or_overallocates(damage in damage(), codec in codec()) {
        let (_, damaged, result) = resume_damaged(codec, &damage, false);
        match result {
            Ok(_) => {}
            Err(ref e @ (Error::Corrupt { ref workflow_id, location: Location::Step { ref path, ref name }, .. }
            | Error::Incompatible { ref workflow_id, location: Location::Step { ref path, ref name }, .. })) => {
                prop_assert_eq!(workflow_id, "w");
                prop_assert_eq!((path.to_string(), name.as_str()), ("1".to_owned(), "load"));
                assert_in_our_words(&e.to_string());
            }
            Err(other) => prop_assert!(false, "unexpected error: {other:?}"),
        }
        LARGEST.store(0, Ordering::Relaxed);
        MEASURING.with(|m| m.set(true));
        let decoded = Codec::decode::<(Vec<u8>, String)>(&damaged);
        MEASURING.with(|m| m.set(false));
        let largest = LARGEST.load(Ordering::Relaxed);
        // The row's bytes, or an error message's worth.
        prop_assert!(largest <= damaged.len().max(512), "{largest} bytes for a {}-byte row ({decoded:?})", damaged.len());
    }
}
