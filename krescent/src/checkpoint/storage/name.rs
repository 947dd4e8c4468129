//! A namespace as one file or object name, and back: what the file and object storages share.

use std::fmt::Write as _;

/// `namespace` followed by `suffix`, as one name: every byte of `namespace` outside
/// `[A-Za-z0-9._-]`, and a leading `.`, as `%XX`, so that any `String` gives a name no file
/// system or object store reads as a path (no `/`, no `..`, no hidden file).
pub(super) fn encode(namespace: &str, suffix: &str) -> String {
    let mut name = String::with_capacity(namespace.len() + suffix.len());
    for byte in namespace.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'.' | b'_' | b'-') && !(name.is_empty() && byte == b'.')
        {
            name.push(char::from(byte));
        } else {
            let _ = write!(name, "%{byte:02X}");
        }
    }
    name.push_str(suffix);
    name
}

/// The namespace `name` is the [`encode`]d name of with `suffix`; `None` for any other name,
/// including one that decodes but is not the name `encode` gives (`a%2Eb` for `a.b`), so that a
/// namespace has exactly one name.
pub(super) fn decode(name: &str, suffix: &str) -> Option<String> {
    let encoded = name.strip_suffix(suffix)?;
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = tail.get(2..)?;
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    let namespace = String::from_utf8(bytes).ok()?;
    (encode(&namespace, suffix) == name).then_some(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_to_namespaces() {
        for namespace in [
            "books.available",
            "a/b",
            "..",
            "ü%",
            ".hidden",
            "",
            "m#0/4",
            "x@s%2F",
        ] {
            let name = encode(namespace, ".suffix");
            assert!(!name.starts_with('.') || namespace.is_empty(), "{name}");
            assert!(
                !name.trim_end_matches(".suffix").contains(['/', '\0']),
                "{name}"
            );
            assert_eq!(decode(&name, ".suffix").as_deref(), Some(namespace));
        }
        assert_eq!(decode("a%2Eb.suffix", ".suffix"), None, "not canonical");
        assert_eq!(decode("a%2.suffix", ".suffix"), None, "truncated escape");
        assert_eq!(decode("ab.other", ".suffix"), None);
    }
}
