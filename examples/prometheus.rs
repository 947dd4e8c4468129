//! krescent's metrics in the Prometheus text format, served on a local port.
//!
//! The library records through the `metrics` facade and installs nothing; this program
//! chooses the exporter: `metrics-exporter-prometheus`'s recorder (without its HTTP features),
//! its text rendered for every request to a small HTTP responder. A bookstore read model
//! streams from an in-memory store while a batch of seeded events is appended every
//! `--every-ms`, so the counters and the lag move.
//!
//! ```text
//! cargo run --example prometheus -- [--listen 127.0.0.1:9464] [--seconds S]
//! curl -s http://127.0.0.1:9464/metrics | grep krescent_
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use krescent::prelude::*;
use krescent::store::InMemoryEventStore;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[path = "shared/bookstore.rs"]
mod bookstore;

use bookstore::{append_batch, BookAdded, BookRemoved};

/// Copies per book, checkpointed in memory.
#[derive(EventModel, Default)]
#[model(name = "bookstore.copies", version = 1)]
#[checkpoint(strategy = "fixed_events(100)", storage = "memory")]
struct Copies {
    #[checkpoint]
    copies: BTreeMap<String, u32>,
}

#[krescent::handlers]
impl Copies {
    fn added(&mut self, e: &BookAdded) {
        *self.copies.entry(e.book_id.clone()).or_default() += e.copies;
    }

    fn removed(&mut self, e: &BookRemoved) {
        self.copies.remove(&e.book_id);
    }
}

/// Serves krescent's metrics in the Prometheus text format while a model streams.
#[derive(clap::Parser)]
#[command(name = "prometheus")]
struct Options {
    /// Where to serve `/metrics` (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Events appended before the model starts.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    events: u32,
    /// Append a batch of 10 events this often, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    every_ms: u64,
    /// Stop after this many seconds (0: run until interrupted).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let options = Options::parse();
    let handle = PrometheusBuilder::new().install_recorder()?;
    krescent::metrics::describe();
    let listener = TcpListener::bind(options.listen).await?;
    println!(
        "serving metrics on http://{}/metrics",
        listener.local_addr()?
    );

    let krescent = Krescent::new(InMemoryEventStore::new());
    append_batch(krescent.store(), options.events).await?;
    let running = krescent.stream(Copies::default());
    let appends = {
        let store = krescent.shared_store().clone();
        let every = Duration::from_millis(options.every_ms.max(1));
        async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = append_batch(&*store, 10).await {
                    eprintln!("append failed: {e}");
                    return;
                }
            }
        }
    };
    let serve = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        if let Err(e) = respond(stream, &handle).await {
                            eprintln!("metrics request failed: {e}");
                        }
                    });
                }
                Err(e) => eprintln!("accept failed: {e}"),
            }
        }
    };
    let stop = async {
        if options.seconds == 0 {
            // An error means no signal can be received: run on.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        } else {
            tokio::time::sleep(Duration::from_secs(options.seconds)).await;
        }
    };
    tokio::select! {
        () = appends => {}
        () = serve => {}
        () = stop => {}
    }
    let stopped = running.shutdown().await?;
    println!(
        "summary: processed={} checkpoints={} books={}",
        stopped.processed,
        stopped.checkpoints,
        stopped.model.copies.len()
    );
    Ok(())
}

/// Answers one HTTP request: the rendered metrics for `GET /metrics`, 404 otherwise.
async fn respond(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut request = vec![0; 4096];
    let read = stream.read(&mut request).await?;
    let request = String::from_utf8_lossy(&request[..read]);
    let (status, body) = if request.starts_with("GET /metrics ") {
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", "try /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
