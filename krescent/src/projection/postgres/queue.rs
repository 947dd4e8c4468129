//! The writes a projection's handlers queue: encoded when they are queued, sent pipelined at
//! the flush, each named after the event that queued it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::BytesMut;
use deadpool_postgres::ClientWrapper;
use futures_util::future::{maybe_done, BoxFuture, FutureExt as _, MaybeDone};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::Statement;

use super::copy::{self, CopyTarget};
use crate::event::RecordedEvent;
use crate::Position;

/// The event a queued write belongs to: what a failure of the write names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EventAt {
    pub(super) position: Position,
    pub(super) event_type: Arc<str>,
    pub(super) stream_id: Arc<str>,
}

impl std::fmt::Display for EventAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the event at position {} (`{}` of stream `{}`)",
            self.position, self.event_type, self.stream_id
        )
    }
}

/// A statement's text and the types of its parameters, as the server described them once.
#[derive(Debug)]
pub(super) struct Described {
    pub(super) sql: String,
    pub(super) types: Vec<Type>,
    /// The types of the columns it returns.
    pub(super) columns: Vec<Type>,
}

/// One encoded parameter: its bytes in the queue's buffer (`None`: NULL), in its format.
#[derive(Debug)]
struct Param {
    bytes: Option<Range<usize>>,
    format: Format,
}

/// One thing to send, in order.
#[derive(Debug)]
enum Item {
    /// A statement with its encoded parameters (`params` in the queue's list), queued by
    /// `events[event]`.
    Write {
        statement: Arc<Described>,
        params: Range<usize>,
        event: usize,
    },
    /// A statement without parameters sent as it is (an event's savepoint).
    Simple(&'static str),
    /// A row for `target`, its values encoded (`params` in the queue's list), queued by
    /// `events[event]`.
    Copy {
        target: Arc<CopyTarget>,
        params: Range<usize>,
        event: usize,
    },
}

/// A row to copy: its values (in the queue's list of parameters) and the event that queued it.
type Row = (Range<usize>, usize);

/// Futures of requests in order, each sent at its first poll, with the event that queued it.
type Sent<'a> = Vec<(
    Option<usize>,
    MaybeDone<BoxFuture<'a, Result<u64, tokio_postgres::Error>>>,
)>;

/// What a flush failed on: the write of an event, or the transaction itself (its `BEGIN`, a
/// savepoint).
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) event: Option<EventAt>,
    pub(super) source: tokio_postgres::Error,
}

/// The queued writes of the open batch, and the statements described so far.
#[derive(Debug)]
pub(super) struct Queue {
    items: Vec<Item>,
    params: Vec<Param>,
    buffer: BytesMut,
    /// The events that queued writes, in order.
    events: Vec<EventAt>,
    /// The event being handled, and whether it is the last of `events` already.
    current: EventAt,
    listed: bool,
    /// Every statement described so far, by its text.
    described: HashMap<String, Arc<Described>>,
    /// Every table rows were copied into so far, by its quoted name.
    targets: HashMap<String, Arc<CopyTarget>>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            items: Vec::new(),
            params: Vec::new(),
            buffer: BytesMut::new(),
            events: Vec::new(),
            current: EventAt {
                position: Position::default(),
                event_type: Arc::from(""),
                stream_id: Arc::from(""),
            },
            listed: false,
            described: HashMap::new(),
            targets: HashMap::new(),
        }
    }
}

impl Queue {
    /// Whether nothing waits to be sent.
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The number of things queued: a mark to [`truncate`](Self::truncate) back to.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// The event whose handler runs next.
    pub(super) fn handling(&mut self, event: &RecordedEvent) {
        self.current.position = event.position();
        self.current.event_type.clone_from(&event.meta.event_type);
        self.current.stream_id.clone_from(&event.meta.stream_id);
        self.listed = false;
    }

    /// The event whose handler runs now (the default one before the runner names any).
    pub(super) fn current(&self) -> &EventAt {
        &self.current
    }

    /// The statement `sql` as described before, if it was.
    pub(super) fn described(&self, sql: &str) -> Option<Arc<Described>> {
        self.described.get(sql).cloned()
    }

    /// Remembers how `sql` was described.
    pub(super) fn describe(
        &mut self,
        sql: &str,
        types: Vec<Type>,
        columns: Vec<Type>,
    ) -> Arc<Described> {
        let described = Arc::new(Described {
            sql: sql.to_owned(),
            types,
            columns,
        });
        self.described.insert(sql.to_owned(), described.clone());
        described
    }

    /// The table `quoted` as described before for copies, if it was.
    pub(super) fn target(&self, quoted: &str) -> Option<Arc<CopyTarget>> {
        self.targets.get(quoted).cloned()
    }

    /// Remembers the table `quoted` (named `name`) and its columns' types.
    pub(super) fn add_target(
        &mut self,
        quoted: &str,
        name: &str,
        types: Vec<Type>,
    ) -> Arc<CopyTarget> {
        let target = Arc::new(CopyTarget {
            copy: format!("COPY {quoted} FROM STDIN (FORMAT binary)"),
            name: name.to_lowercase(),
            types,
        });
        self.targets.insert(quoted.to_owned(), target.clone());
        target
    }

    /// Encodes `values` for `target`'s columns and queues the row for the current event.
    ///
    /// # Errors
    /// As [`push_write`](Self::push_write); also a value larger than 2 GiB.
    pub(super) fn push_copy(
        &mut self,
        target: Arc<CopyTarget>,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let params = self.encode(&target.types, values, "the table has")?;
        let too_large = self.params[params.clone()].iter().any(|p| {
            p.bytes
                .as_ref()
                .is_some_and(|b| i32::try_from(b.len()).is_err())
                || !matches!(p.format, Format::Binary)
        });
        if too_large {
            self.truncate_params(params.start);
            return Err(
                "a value is larger than 2 GiB, or not in the binary format, which `COPY` needs"
                    .into(),
            );
        }
        let event = self.list_current();
        self.items.push(Item::Copy {
            target,
            params,
            event,
        });
        Ok(())
    }

    /// The index of the current event in `events`, listing it if it is not yet.
    fn list_current(&mut self) -> usize {
        if !self.listed {
            self.events.push(self.current.clone());
            self.listed = true;
        }
        self.events.len() - 1
    }

    /// Encodes `params` as `types`; their range in the list of parameters.
    fn encode(
        &mut self,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
        has: &str,
    ) -> Result<Range<usize>, Box<dyn std::error::Error + Send + Sync>> {
        if params.len() != types.len() {
            return Err(format!(
                "{has} {} columns or parameters, {} values were given",
                types.len(),
                params.len()
            )
            .into());
        }
        let first = self.params.len();
        for (param, ty) in params.iter().zip(types) {
            let start = self.buffer.len();
            let bytes = match param.to_sql_checked(ty, &mut self.buffer) {
                Ok(IsNull::No) => Some(start..self.buffer.len()),
                Ok(IsNull::Yes) => None,
                Err(e) => {
                    self.buffer.truncate(start);
                    self.truncate_params(first);
                    return Err(e);
                }
            };
            self.params.push(Param {
                bytes,
                format: param.encode_format(ty),
            });
        }
        Ok(first..self.params.len())
    }

    /// Forgets the parameters from `first` on, and their bytes.
    fn truncate_params(&mut self, first: usize) {
        let bytes = self.params[..first]
            .iter()
            .rev()
            .find_map(|p| p.bytes.as_ref().map(|b| b.end))
            .unwrap_or(0);
        self.params.truncate(first);
        self.buffer.truncate(bytes);
    }

    /// Queues a simple statement.
    pub(super) fn push_simple(&mut self, sql: &'static str) {
        self.items.push(Item::Simple(sql));
    }

    /// Encodes `params` for `statement` and queues it for the current event.
    ///
    /// # Errors
    /// The parameter's own failure (a value of the wrong type, one too large), or a wrong
    /// number of parameters; nothing is queued then.
    pub(super) fn push_write(
        &mut self,
        statement: Arc<Described>,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let params = self.encode(&statement.types, params, "the statement has")?;
        let event = self.list_current();
        self.items.push(Item::Write {
            statement,
            params,
            event,
        });
        Ok(())
    }

    /// Forgets what was queued after `mark` (a [`len`](Self::len)).
    pub(super) fn truncate(&mut self, mark: usize) {
        self.items.truncate(mark);
        let params = self.items.iter().rev().find_map(|item| match item {
            Item::Write { params, .. } | Item::Copy { params, .. } => Some(params.end),
            Item::Simple(_) => None,
        });
        self.truncate_params(params.unwrap_or(0));
        if self.items.is_empty() {
            self.events.clear();
            self.listed = false;
        }
    }

    /// Forgets everything queued.
    pub(super) fn clear(&mut self) {
        self.truncate(0);
    }

    /// Sends `begin` (when given) and every queued write through `client`, pipelined: each
    /// request goes out before any answer is awaited, so the batch costs about one round trip
    /// plus the server's work. Stops at the first failure; the queue is empty afterwards either
    /// way.
    pub(super) async fn send(
        &mut self,
        client: &ClientWrapper,
        begin: Option<&str>,
    ) -> Result<(), Failed> {
        let result = self.send_queued(client, begin).await;
        self.clear();
        result
    }

    async fn send_queued(&self, client: &ClientWrapper, begin: Option<&str>) -> Result<(), Failed> {
        // Each statement is prepared once per connection (a round trip the first time only).
        let mut statements: Vec<(&Arc<Described>, Statement)> = Vec::new();
        for item in &self.items {
            if let Item::Write { statement, .. } = item {
                if !statements.iter().any(|(d, _)| Arc::ptr_eq(d, statement)) {
                    let prepared = client
                        .prepare_typed_cached(&statement.sql, &statement.types)
                        .await
                        .map_err(|source| Failed {
                            event: None,
                            source,
                        })?;
                    statements.push((statement, prepared));
                }
            }
        }
        let mut sent: Sent<'_> = Vec::with_capacity(self.items.len() + 1);
        if let Some(begin) = begin {
            let begin = client.batch_execute(begin).map(|r| r.map(|()| 0)).boxed();
            send(&mut sent, None, begin).await;
        }
        // Rows to copy wait for the `COPY` of their table, loaded before the first later
        // statement that names the table (or a savepoint), else at the end.
        let mut copies: Vec<(&Arc<CopyTarget>, Vec<Row>)> = Vec::new();
        for item in &self.items {
            match item {
                Item::Copy {
                    target,
                    params,
                    event,
                } => match copies.iter_mut().find(|(t, _)| Arc::ptr_eq(t, target)) {
                    Some((_, rows)) => rows.push((params.clone(), *event)),
                    None => copies.push((target, vec![(params.clone(), *event)])),
                },
                Item::Simple(sql) => {
                    for (target, rows) in std::mem::take(&mut copies) {
                        self.copy(client, &mut sent, target, &rows).await?;
                    }
                    let simple = client.batch_execute(sql).map(|r| r.map(|()| 0)).boxed();
                    send(&mut sent, None, simple).await;
                }
                Item::Write {
                    statement,
                    params,
                    event,
                } => {
                    let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut copies)
                        .into_iter()
                        .partition(|(target, _)| target.named_in(&statement.sql));
                    copies = later;
                    for (target, rows) in now {
                        self.copy(client, &mut sent, target, &rows).await?;
                    }
                    let Some((_, prepared)) =
                        statements.iter().find(|(d, _)| Arc::ptr_eq(d, statement))
                    else {
                        continue; // prepared above
                    };
                    let raw = self.params[params.clone()].iter().map(|p| self.raw(p));
                    send(
                        &mut sent,
                        Some(*event),
                        client.execute_raw(prepared, raw).boxed(),
                    )
                    .await;
                }
            }
        }
        for (target, rows) in copies {
            self.copy(client, &mut sent, target, &rows).await?;
        }
        self.settle(&mut sent).await
    }

    /// A parameter as the driver takes it.
    fn raw(&self, param: &Param) -> Raw<'_> {
        Raw {
            bytes: param.bytes.clone().map(|b| &self.buffer[b]),
            format: param.format,
        }
    }

    /// Waits for every request sent so far, in order; the first failure.
    async fn settle(&self, sent: &mut Sent<'_>) -> Result<(), Failed> {
        for (event, mut future) in sent.drain(..) {
            (&mut future).await;
            let output = std::pin::Pin::new(&mut future).take_output();
            if let Some(Err(source)) = output {
                return Err(Failed {
                    event: event.and_then(|e| self.events.get(e).cloned()),
                    source,
                });
            }
        }
        Ok(())
    }

    /// Loads `rows` (their values, and the event that queued each) into `target` with one
    /// `COPY`, after every request sent before.
    async fn copy(
        &self,
        client: &ClientWrapper,
        sent: &mut Sent<'_>,
        target: &CopyTarget,
        rows: &[Row],
    ) -> Result<(), Failed> {
        self.settle(sent).await?;
        let data = copy::encode(rows.iter().map(|(params, _)| {
            self.params[params.clone()]
                .iter()
                .map(|p| p.bytes.clone().map(|b| &self.buffer[b]))
                .collect()
        }));
        copy::load(client, target, data)
            .await
            .map(drop)
            .map_err(|source| Failed {
                event: copy::failed_row(&source)
                    .and_then(|row| rows.get(row))
                    .and_then(|(_, event)| self.events.get(*event).cloned()),
                source,
            })
    }
}

/// Adds `future` (of a request queued by `events[event]`) to `sent` and polls it once: its
/// request goes out now, after every earlier one.
async fn send<'a>(
    sent: &mut Sent<'a>,
    event: Option<usize>,
    future: BoxFuture<'a, Result<u64, tokio_postgres::Error>>,
) {
    sent.push((event, maybe_done(future)));
    if let Some((_, last)) = sent.last_mut() {
        std::future::poll_fn(|cx| {
            let _ = std::future::Future::poll(std::pin::Pin::new(&mut *last), cx);
            std::task::Poll::Ready(())
        })
        .await;
    }
}

/// An encoded parameter, handed to the driver as it is.
#[derive(Debug)]
struct Raw<'a> {
    bytes: Option<&'a [u8]>,
    format: Format,
}

impl ToSql for Raw<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.bytes {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked when the value was encoded.
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql(ty, out)
    }

    fn encode_format(&self, _: &Type) -> Format {
        self.format
    }
}
