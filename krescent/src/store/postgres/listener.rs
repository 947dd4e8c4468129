//! The live tail: one `LISTEN` connection per store, publishing the newest notified head.

use std::future::poll_fn;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, warn};

use crate::Position;

/// The first pause before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A task that keeps a `LISTEN` connection open and publishes the head it learns of; aborted
/// when dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    head: watch::Receiver<Position>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the listening task needs.
pub(crate) struct ListenTo {
    /// How to connect.
    pub(crate) config: tokio_postgres::Config,
    /// `LISTEN "channel"`.
    pub(crate) listen: String,
    /// A query of one row and one `bigint` column: the head.
    pub(crate) head_query: String,
    /// What the payloads of this store's notifications start with (the position follows);
    /// others on the same channel are of another table.
    pub(crate) prefix: String,
}

impl Listener {
    /// Starts listening; must be called inside a Tokio runtime.
    pub(crate) fn spawn(to: ListenTo) -> Self {
        let (tx, head) = watch::channel(Position::START);
        Listener {
            head,
            task: tokio::spawn(listen(to, tx)),
        }
    }

    /// Whether the task still runs (it ends only with its runtime).
    pub(crate) fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// The head it publishes.
    pub(crate) fn head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }
}

/// Resolves when `head` shows a position after `after`, or after `timeout`.
pub(crate) async fn wait_past(
    mut head: watch::Receiver<Position>,
    after: Position,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let task_gone = matches!(
        tokio::time::timeout_at(deadline, head.wait_for(|head| *head > after)).await,
        Ok(Err(_))
    );
    if task_gone {
        // Never return early then, or callers would spin.
        tokio::time::sleep_until(deadline).await;
    }
}

fn publish(tx: &watch::Sender<Position>, head: Position) {
    tx.send_if_modified(|known| {
        let newer = head > *known;
        if newer {
            *known = head;
        }
        newer
    });
}

/// Connects, listens, publishes; reconnects with backoff whenever the connection is lost.
async fn listen(to: ListenTo, tx: watch::Sender<Position>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match to.config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let driver = async {
                    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if let Some(Ok(head)) =
                                    n.payload().strip_prefix(&to.prefix).map(str::parse::<u64>)
                                {
                                    publish(&tx, Position::new(head));
                                } else {
                                    debug!(
                                        payload = n.payload(),
                                        "ignoring a notification of another table"
                                    );
                                }
                            }
                            Ok(_) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                };
                let setup = async {
                    client.batch_execute(&to.listen).await?;
                    // Appends committed while no connection listened notified no one: catch up.
                    let head: i64 = client.query_one(&to.head_query, &[]).await?.get(0);
                    publish(&tx, Position::new(u64::try_from(head).unwrap_or(0)));
                    Ok::<_, tokio_postgres::Error>(())
                };
                tokio::pin!(driver);
                let ended = tokio::select! {
                    ended = &mut driver => ended,
                    ready = setup => match ready {
                        Ok(()) => {
                            debug!("listening for appends");
                            backoff = MIN_BACKOFF;
                            driver.await
                        }
                        Err(e) => Err(e),
                    },
                };
                match ended {
                    Ok(()) => warn!("the listening connection closed; reconnecting"),
                    Err(e) => warn!(error = %e, "the listening connection failed; reconnecting"),
                }
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot open the listening connection");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
