//! Decoding a journal row never allocates in proportion to what a corrupt or hostile
//! length prefix claims. A counting allocator records the largest single allocation made
//! while decoding 9-byte rows that claim `u64::MAX` elements; claims over zero-sized
//! elements, which take no bytes, must fail rather than decode for ever.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use durable_runtime::{Bincode, Codec};

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

fn hostile_row() -> Vec<u8> {
    let mut row = vec![253u8];
    row.extend_from_slice(&u64::MAX.to_le_bytes());
    row
}

fn largest_allocation_decoding<T: serde::de::DeserializeOwned>(row: &[u8]) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    MEASURING.with(|m| m.set(true));
    let result = Bincode.decode::<T>(row);
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
        let bound = (row_len * element).max(128);
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
    let err = Bincode.decode::<Vec<()>>(&row).expect_err("refused");
    assert!(
        err.to_string().contains("more than a 9-byte row can hold"),
        "{err}"
    );
    #[derive(serde::Deserialize, Debug)]
    struct Marker;
    assert!(Bincode.decode::<Vec<Marker>>(&row).is_err());
    assert!(Bincode.decode::<HashMap<(), ()>>(&row).is_err());
    assert!(
        Bincode
            .decode::<Vec<Vec<()>>>(&[1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .is_err()
    );
    // Honest zero-sized sequences still decode.
    let thousand = Bincode.encode(&vec![(); 1000]).expect("encode");
    assert_eq!(
        Bincode.decode::<Vec<()>>(&thousand).expect("decode").len(),
        1000
    );
}
