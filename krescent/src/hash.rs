//! A stable hash: the same in every build, process and platform, unlike `std`'s hashers.

/// FNV-1a, 64 bits, of `parts`, each followed by a separator byte so that `["ab", "c"]` and
/// `["a", "bc"]` differ. Checkpoint versions, advisory lock keys and segments rely on it never
/// changing.
pub(crate) fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::stable_hash;

    #[test]
    fn the_hash_is_fixed_and_separates_parts() {
        // Pinned: changing the function would move every stream to another segment.
        assert_eq!(stable_hash(["orders-1"]), 0x959a_0af6_4645_441b);
        assert_eq!(stable_hash([]), 0xcbf2_9ce4_8422_2325);
        assert_ne!(stable_hash(["ab", "c"]), stable_hash(["a", "bc"]));
    }
}
