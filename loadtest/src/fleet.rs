//! What every scenario needs around its connection tasks: a shared clock, counters, error
//! collection, the handshake semaphore, the stop signal and progress bars.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{watch, Semaphore};

use crate::procstat::Watch;
use crate::session::keepalive;
use crate::stats::Latency;
use crate::target::Target;
use crate::ws::Conn;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the tool started: the clock embedded in publications and read at receipt.
pub fn now_us() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Everything a scenario gets from the command line that is not scenario-specific.
pub struct Ctx {
    pub target: Arc<Target>,
    pub watch: Watch,
    pub label: String,
    pub concurrency: usize,
    pub ramp_timeout: Duration,
}

/// Counters shared by a fleet of connection tasks.
#[derive(Default)]
pub struct Fleet {
    pub subscribed: AtomicUsize,
    pub failed: AtomicUsize,
    pub dropped: AtomicUsize,
    pub connect_latency: Latency,
    errors: Mutex<Vec<(String, usize)>>,
}

impl Fleet {
    pub fn error(&self, e: &anyhow::Error) {
        let text: String = format!("{e:#}").chars().take(160).collect();
        if let Ok(mut errors) = self.errors.lock() {
            if let Some(entry) = errors.iter_mut().find(|(t, _)| *t == text) {
                entry.1 += 1;
            } else if errors.len() < 20 {
                errors.push((text, 1));
            }
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .map(|e| e.iter().map(|(t, n)| format!("{n}× {t}")).collect())
            .unwrap_or_default()
    }
}

/// Stop signal for connection tasks: every task holds a receiver and ends when it changes.
pub fn stop_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Signals stop and waits up to 10 s for the connection tasks to end, then aborts the rest.
pub async fn shut_down<T: 'static>(
    stop: &watch::Sender<bool>,
    tasks: &mut tokio::task::JoinSet<T>,
) {
    let _ = stop.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(msg.to_owned());
    bar
}

/// Waits until `done()` reaches `total` or `timeout` passes, updating a progress bar.
pub async fn wait_for(total: u64, msg: &str, timeout: Duration, done: impl Fn() -> u64) -> bool {
    let bar = bar(total, msg);
    let deadline = Instant::now() + timeout;
    let complete = loop {
        let n = done();
        bar.set_position(n);
        if n >= total {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    bar.finish_and_clear();
    complete
}

/// A handshake permit: limits how many connections are being opened at once during a ramp.
pub fn handshake_limit(concurrency: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(concurrency.max(1)))
}

/// Keeps a connection alive (answering pings) until the stop signal; counts unexpected drops.
pub async fn hold(mut conn: Conn, mut stop: watch::Receiver<bool>, fleet: &Fleet) -> Conn {
    // One waiter registration for the whole loop: a fresh `changed()` per event would lock
    // the channel's shared waiter list twice per delivery, across every task.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            event = conn.next_event() => {
                let ok = match event {
                    Ok(e) => keepalive(&mut conn, e).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = ok {
                    fleet.dropped.fetch_add(1, Ordering::Relaxed);
                    fleet.error(&e.context("after subscribing"));
                    // Wait for stop so the caller's bookkeeping stays simple.
                    let _ = (&mut stopped).await;
                    return conn;
                }
            }
            _ = &mut stopped => return conn,
        }
    }
}
