//! A projection's checkpoint is a reference, not the data: its revision and the shape of each of
//! its tables, under these keys of its bucket.

use std::collections::BTreeMap;

use crate::checkpoint::CheckpointBucket;

/// The key of the projection's revision.
pub(super) const REVISION: &str = "revision";
/// The key of its tables' shapes (plain name → columns and types).
pub(super) const TABLES: &str = "tables";

/// The projection references in a checkpoint's bucket: each one's revision and the plain names
/// (`schema.table`) of the tables it names.
pub(super) fn references(bucket: &CheckpointBucket) -> Vec<(u32, Vec<String>)> {
    let mut found = Vec::new();
    for (_, value) in bucket.iter() {
        let crate::checkpoint::BucketValue::Bucket(nested) = value else {
            continue;
        };
        let (Ok(revision), Ok(shapes)) = (
            nested.get::<u32>(REVISION),
            nested.get::<BTreeMap<String, String>>(TABLES),
        ) else {
            continue;
        };
        found.push((revision, shapes.into_keys().collect()));
    }
    found
}
