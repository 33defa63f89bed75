//! CRC-32 (IEEE 802.3, the zlib one) of recorded values, so that a damaged journal row is
//! reported as damaged instead of decoding into a different value. It detects every
//! error of up to 3 flipped bits and every burst of up to 32 bits in rows of any size we
//! record, and other damage with probability 1 - 2^-32.

/// The lookup table for the reflected polynomial `0xEDB88320`, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The CRC-32 of `bytes` (how values were checksummed up to schema version 4).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    !update(!0, bytes)
}

/// The checksum of a value together with the key it is recorded under (since schema
/// version 5): the CRC-32 of each part of `key` followed by `0xFF` (a byte no UTF-8
/// text holds, so `("ab", "c")` and `("a", "bc")` differ), then of `value`.
///
/// A damaged key (a workflow id, a step's path or name, a message's topic) then fails
/// the check like a damaged value would, instead of putting an intact value under
/// another key: step 1's result replayed as step 3's.
pub(crate) fn keyed_crc32(key: &[&[u8]], value: &[u8]) -> u32 {
    let mut c = !0u32;
    for part in key {
        c = update(c, part);
        c = update(c, &[0xFF]);
    }
    !update(c, value)
}

/// Whether a recorded value, recorded under `key`, matches its checksum (rows older
/// than schema 2 of the SQLite journal have none). See [`keyed_crc32`] for the keys.
pub(crate) fn checks(key: &[&[u8]], bytes: &[u8], crc: Option<u32>) -> bool {
    crc.is_none_or(|crc| crc == keyed_crc32(key, bytes))
}

/// The key of a workflow's input or output: its id. (Not its name: renaming the
/// workflows of a journal by hand, after renaming their function, is a legitimate
/// repair; and a damaged name finds no workflow, or one whose input type refuses the
/// value.)
pub(crate) fn workflow_key(id: &str) -> [&[u8]; 1] {
    [id.as_bytes()]
}

/// The key of a step's result (output or error): its workflow, path and name.
pub(crate) fn step_key<'a>(workflow_id: &'a str, path: &'a str, name: &'a str) -> [&'a [u8]; 3] {
    [workflow_id.as_bytes(), path.as_bytes(), name.as_bytes()]
}

/// What a start record's checksum covers, under its step's key ([`step_key`]): when it
/// began and when it wakes (if it does), as decimal text, `started_at` or
/// `started_at:wake_at` (what SQL's `started_at || ':' || wake_at` makes, so a check
/// in SQL computes the same bytes).
pub(crate) fn started_value(started_at: i64, wake_at: Option<i64>) -> String {
    match wake_at {
        Some(wake_at) => format!("{started_at}:{wake_at}"),
        None => started_at.to_string(),
    }
}

/// The key of a message's payload: its destination and topic.
pub(crate) fn message_key<'a>(destination: &'a str, topic: &'a str) -> [&'a [u8]; 2] {
    [destination.as_bytes(), topic.as_bytes()]
}

/// The key of an event's value: its workflow and key.
pub(crate) fn event_key<'a>(workflow_id: &'a str, key: &'a str) -> [&'a [u8]; 2] {
    [workflow_id.as_bytes(), key.as_bytes()]
}

/// `c` (a CRC-32 register) after `bytes`.
fn update(mut c: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::{crc32, keyed_crc32};

    #[test]
    fn a_key_changes_the_checksum_and_its_parts_are_delimited() {
        assert_eq!(keyed_crc32(&[], b"value"), crc32(b"value"));
        let base = keyed_crc32(&[b"w", b"1"], b"v");
        assert_ne!(base, crc32(b"v"));
        assert_ne!(base, keyed_crc32(&[b"w", b"3"], b"v"));
        assert_ne!(
            keyed_crc32(&[b"ab", b"c"], b"v"),
            keyed_crc32(&[b"a", b"bc"], b"v")
        );
    }

    #[test]
    fn matches_the_standard_check_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }
}
