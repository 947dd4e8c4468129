//! `object_store_checkpoint`: a large state's checkpoint written to a bucket of a real S3
//! server (`moto`, started as the tests start it), against the same job written by hand: the
//! map encoded by hand (as `large_state`'s floor encodes it) and `PUT` with `object_store` to
//! the same bucket. `store_ratio` compares the store alone, of a snapshot already taken, with
//! the `PUT` of its very bytes.

use std::error::Error;

use krescent::checkpoint::storage::object_store::path::Path;
use krescent::checkpoint::storage::object_store::{ObjectStoreExt as _, PutPayload};
use krescent::checkpoint::CheckpointStorage;

use crate::large;
use crate::measure::{median, medians_in_turns};
use crate::Options;

pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let storage = krescent_testkit::s3::fresh_storage().await;
    let model = large::Large {
        entries: large::entries(options.events),
    };
    // The checkpoint as a running model writes it: the snapshot into a bucket, then the store;
    // against the baseline, the same job by hand: the map encoded into one buffer and `PUT` to
    // another key of the bucket. In turns, so that the machine's load weighs on both alike.
    let by_hand = Path::from("bench/by-hand");
    let (checkpoint, baseline) = medians_in_turns(
        options.reps,
        || async {
            let stored = large::snapshot(&model, storage.format(), options.events)?;
            storage.store(&stored).await?;
            Ok::<_, Box<dyn Error>>(())
        },
        || async {
            let document = large::encode_by_hand(&model.entries)?;
            storage
                .object_store()
                .put(&by_hand, PutPayload::from(document))
                .await?;
            Ok::<_, Box<dyn Error>>(())
        },
    )
    .await?;
    // The bytes of krescent's object, `PUT` by hand: what the store alone is compared with.
    let key = storage.key_of(<large::Large as krescent::EventModel>::NAME)?;
    let bytes = storage.object_store().get(&key).await?.bytes().await?;
    let size = bytes.len();
    let payload = PutPayload::from(bytes);
    // Where the difference goes: the snapshot alone, and the store of a snapshot taken.
    let snapshot = median(options.reps, || async {
        large::snapshot(&model, storage.format(), options.events)
    })
    .await?;
    let stored = large::snapshot(&model, storage.format(), options.events)?;
    let (store, put) = medians_in_turns(
        options.reps,
        || async {
            storage.store(&stored).await?;
            Ok::<_, Box<dyn Error>>(())
        },
        || async {
            storage
                .object_store()
                .put(&by_hand, payload.clone())
                .await?;
            Ok::<_, Box<dyn Error>>(())
        },
    )
    .await?;
    let checksum = median(options.reps, || async {
        Ok::<_, Box<dyn Error>>(std::hint::black_box(stored.checksum()))
    })
    .await?;
    eprintln!(
        "object_store_checkpoint: of which the snapshot {} ms, the store {} ms (its checksum {} ms)",
        snapshot.as_millis(),
        store.as_millis(),
        checksum.as_millis()
    );
    println!(
        "bench object_store_checkpoint ratio={:.3} checkpoint_ms={} baseline_ms={} store_ratio={:.3} store_ms={} put_ms={} keys={} bytes={size}",
        baseline.as_secs_f64() / checkpoint.as_secs_f64(),
        checkpoint.as_millis(),
        baseline.as_millis(),
        put.as_secs_f64() / store.as_secs_f64(),
        store.as_millis(),
        put.as_millis(),
        model.entries.len(),
    );
    Ok(())
}
