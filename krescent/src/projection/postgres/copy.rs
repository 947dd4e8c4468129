//! Rows a projection's handlers insert with [`PostgresProjection::insert`](super::PostgresProjection::insert):
//! loaded with one binary `COPY` per table and flush.

use bytes::{BufMut as _, Bytes, BytesMut};
use deadpool_postgres::ClientWrapper;
use futures_util::SinkExt as _;
use tokio_postgres::types::Type;

/// A table rows are copied into: its `COPY` statement, how statements name it, and the types
/// of its columns as the server described them.
#[derive(Debug)]
pub(super) struct CopyTarget {
    /// `COPY <quoted> FROM STDIN (FORMAT binary)`.
    pub(super) copy: String,
    /// The table's own name, lowercased: a queued statement whose text contains it may read
    /// or write the table, so the rows copied before it are loaded before it runs.
    pub(super) name: String,
    pub(super) types: Vec<Type>,
}

impl CopyTarget {
    /// Whether `sql` may touch the table (it names it).
    pub(super) fn named_in(&self, sql: &str) -> bool {
        sql.to_lowercase().contains(&self.name)
    }
}

/// The binary `COPY` stream of `rows`, each a list of encoded values (`None`: NULL).
pub(super) fn encode<'a>(rows: impl Iterator<Item = Vec<Option<&'a [u8]>>>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags
    out.put_i32(0); // header extension
    for row in rows {
        out.put_i16(i16::try_from(row.len()).unwrap_or(i16::MAX));
        for value in row {
            match value {
                Some(bytes) => {
                    out.put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
                    out.put_slice(bytes);
                }
                None => out.put_i32(-1),
            }
        }
    }
    out.put_i16(-1);
    out.freeze()
}

/// Loads `data` (from [`encode`]) with `target`'s `COPY`; the number of rows.
pub(super) async fn load(
    client: &ClientWrapper,
    target: &CopyTarget,
    data: Bytes,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(&target.copy).await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(data).await?;
    sink.as_mut().finish().await
}

/// The row (0-based) a `COPY`'s error is about, from its context (`COPY t, line 5`).
pub(super) fn failed_row(error: &tokio_postgres::Error) -> Option<usize> {
    let context = error.as_db_error()?.where_()?;
    let line = context.split(", line ").nth(1)?;
    let digits: String = line.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<usize>().ok()?.checked_sub(1)
}
