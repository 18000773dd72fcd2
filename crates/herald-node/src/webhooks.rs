//! Webhook delivery (<https://pusher.com/docs/channels/server_api/webhooks/>): batches of events POSTed to each app's URLs, signed with
//! `X-Pusher-Key` and `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the app secret),
//! `Content-Type: application/json` exactly.
//!
//! `channel_vacated` and `member_removed` wait 3 s: if the channel is occupied again (or the
//! member comes back) meanwhile, neither event is sent. `cache_miss` is sent at most once per
//! channel every 5 s. A failed delivery is retried with exponential back-off for 5 minutes.
//! Every queue is bounded; what does not fit is counted in `herald_webhooks_dropped_total`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_hub::monitor::{Activity, Monitor};
use herald_hub::{WebhookEvent, WebhookSink};
use http_body_util::Full;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use herald_hub::App;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const QUEUE: usize = 10_000;
const DELAY: Duration = Duration::from_secs(3);
const CACHE_MISS_EVERY: Duration = Duration::from_secs(5);
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const MAX_BATCH: usize = 50;
const RETRY_FOR: Duration = Duration::from_secs(300);
const MAX_DELIVERIES: usize = 64;

/// The current settings of an app, by id (the hub's): targets, key and secret are read when a
/// batch is sent, so a changed webhook list or a rotated secret applies to the next batch.
pub type AppLookup = Arc<dyn Fn(&str) -> Option<Arc<App>> + Send + Sync>;

/// The hub's webhook sink: queues events for the delivery task.
pub struct Webhooks {
    tx: mpsc::Sender<(String, WebhookEvent)>,
}

impl WebhookSink for Webhooks {
    fn emit(&self, app_id: &str, event: WebhookEvent) {
        if self.tx.try_send((app_id.to_owned(), event)).is_err() {
            metrics::counter!("herald_webhooks_dropped_total").increment(1);
        }
    }
}

/// The running delivery: its sink for the hub, and how to finish it on shutdown.
pub struct Delivery {
    sink: Arc<Webhooks>,
    finish: CancellationToken,
    batcher: tokio::task::JoinHandle<()>,
    posts: TaskTracker,
}

impl Delivery {
    pub fn sink(&self) -> Arc<Webhooks> {
        self.sink.clone()
    }

    /// Sends what is queued or delayed now (the departures a drain causes included), then
    /// waits until `deadline` for the deliveries in flight.
    pub async fn finish(self, deadline: Instant) {
        self.finish.cancel();
        let _ = tokio::time::timeout_at(deadline, self.batcher).await;
        self.posts.close();
        if tokio::time::timeout_at(deadline, self.posts.wait())
            .await
            .is_err()
        {
            tracing::warn!("webhook deliveries still in flight at the drain deadline were dropped");
        }
    }
}

/// Starts delivery (apps can gain webhooks while the node runs, so it always runs: one task
/// that wakes every 100 ms).
pub fn start(apps: AppLookup, tasks: &TaskTracker, monitor: Arc<Monitor>) -> Delivery {
    metrics::counter!("herald_webhooks_dropped_total").absolute(0);
    let (tx, rx) = mpsc::channel(QUEUE);
    let finish = CancellationToken::new();
    let posts = TaskTracker::new();
    let posting = Posting {
        deliveries: Arc::new(Semaphore::new(MAX_DELIVERIES)),
        tls: tls_connector(),
        posts: posts.clone(),
        monitor,
    };
    let batcher = tasks.spawn(run(rx, apps, finish.clone(), posting));
    Delivery {
        sink: Arc::new(Webhooks { tx }),
        finish,
        batcher,
        posts,
    }
}

fn cancels(pending: &WebhookEvent, incoming: &WebhookEvent) -> bool {
    match (pending, incoming) {
        (
            WebhookEvent::ChannelVacated { channel: a },
            WebhookEvent::ChannelOccupied { channel: b },
        ) => a == b,
        (
            WebhookEvent::MemberRemoved {
                channel: a,
                user_id: u,
            },
            WebhookEvent::MemberAdded {
                channel: b,
                user_id: v,
            },
        ) => a == b && u == v,
        _ => false,
    }
}

async fn run(
    mut rx: mpsc::Receiver<(String, WebhookEvent)>,
    apps: AppLookup,
    finish: CancellationToken,
    posting: Posting,
) {
    let mut delayed: Vec<(Instant, String, WebhookEvent)> = Vec::new();
    let mut batches: HashMap<String, Vec<WebhookEvent>> = HashMap::new();
    let mut misses: HashMap<(String, String), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some((app, event)) = next else { return };
                queue(app, event, &mut delayed, &mut batches, &mut misses);
                if batches.values().any(|b| b.len() >= MAX_BATCH) {
                    flush(&mut batches, &apps, &posting);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = delayed.drain(..).partition(|(at, _, _)| *at <= now);
                delayed = later;
                for (_, app, event) in due {
                    batches.entry(app).or_default().push(event);
                }
                misses.retain(|_, at| at.elapsed() < CACHE_MISS_EVERY);
                flush(&mut batches, &apps, &posting);
            }
            _ = finish.cancelled() => {
                // Shutting down: what is queued goes now, delayed events included (the
                // node will not be here to cancel them).
                while let Ok((app, event)) = rx.try_recv() {
                    queue(app, event, &mut delayed, &mut batches, &mut misses);
                }
                for (_, app, event) in delayed.drain(..) {
                    batches.entry(app).or_default().push(event);
                }
                flush(&mut batches, &apps, &posting);
                return;
            }
        }
    }
}

/// Takes one event in: delayed (vacated, removed), cancelling a delayed counterpart
/// (occupied, added), de-duplicated (cache misses), or batched.
fn queue(
    app: String,
    event: WebhookEvent,
    delayed: &mut Vec<(Instant, String, WebhookEvent)>,
    batches: &mut HashMap<String, Vec<WebhookEvent>>,
    misses: &mut HashMap<(String, String), Instant>,
) {
    match &event {
        WebhookEvent::ChannelVacated { .. } | WebhookEvent::MemberRemoved { .. } => {
            if delayed.len() < QUEUE {
                delayed.push((Instant::now() + DELAY, app, event));
            } else {
                metrics::counter!("herald_webhooks_dropped_total").increment(1);
            }
        }
        WebhookEvent::ChannelOccupied { .. } | WebhookEvent::MemberAdded { .. } => {
            match delayed
                .iter()
                .position(|(_, a, p)| *a == app && cancels(p, &event))
            {
                // Back within the delay: neither event happened, as far as the app knows.
                Some(i) => {
                    delayed.remove(i);
                }
                None => batches.entry(app).or_default().push(event),
            }
        }
        WebhookEvent::CacheMiss { channel } => {
            let key = (app.clone(), channel.clone());
            if misses
                .get(&key)
                .is_none_or(|at| at.elapsed() >= CACHE_MISS_EVERY)
            {
                misses.insert(key, Instant::now());
                batches.entry(app).or_default().push(event);
            }
        }
        _ => batches.entry(app).or_default().push(event),
    }
}

/// What sending batches needs: the bound on deliveries in flight, the TLS client, the
/// tasks to wait for on shutdown, and the console's monitor (each outcome is shown there).
struct Posting {
    deliveries: Arc<Semaphore>,
    tls: TlsConnector,
    posts: TaskTracker,
    monitor: Arc<Monitor>,
}

/// Shows a batch's outcome on the consoles watching its app.
fn show(
    monitor: &Monitor,
    app_id: &str,
    events: &[(&'static str, String)],
    outcome: &str,
    status: Option<u16>,
) {
    for (event, channel) in events {
        monitor.record(app_id, |_| Activity::Webhook {
            event: (*event).to_owned(),
            channel: channel.clone(),
            outcome: outcome.to_owned(),
            status,
        });
    }
}

fn flush(batches: &mut HashMap<String, Vec<WebhookEvent>>, apps: &AppLookup, posting: &Posting) {
    for (app_id, events) in batches.drain() {
        let Some(app) = apps(&app_id) else {
            continue;
        };
        for target in &app.webhooks {
            let Ok(uri) = target.url.parse::<Uri>() else {
                continue;
            };
            let wanted: HashSet<&str> = target.event_types.iter().map(String::as_str).collect();
            let chosen: Vec<&WebhookEvent> = events
                .iter()
                .filter(|e| wanted.is_empty() || wanted.contains(e.name()))
                .collect();
            let shown: Vec<(&'static str, String)> = chosen
                .iter()
                .map(|e| (e.name(), e.channel().to_owned()))
                .collect();
            let chosen: Vec<Value> = chosen.into_iter().map(WebhookEvent::to_json).collect();
            if chosen.is_empty() {
                continue;
            }
            let time_ms = herald_hub::clock::now_ms();
            let body = Bytes::from(json!({ "time_ms": time_ms, "events": chosen }).to_string());
            let signature = herald_protocol::signature::sign(&app.secret, &body);
            let Ok(permit) = posting.deliveries.clone().try_acquire_owned() else {
                metrics::counter!("herald_webhooks_dropped_total").increment(chosen.len() as u64);
                show(&posting.monitor, &app_id, &shown, "dropped", None);
                tracing::warn!(app = %app_id, "too many webhook deliveries in flight; batch dropped");
                continue;
            };
            let (key, app_id, tls) = (app.key.clone(), app_id.clone(), posting.tls.clone());
            let monitor = posting.monitor.clone();
            posting.posts.spawn(async move {
                let _permit = permit;
                let report = |outcome: &str, status: Option<u16>| {
                    show(&monitor, &app_id, &shown, outcome, status)
                };
                deliver(&app_id, &uri, &key, &signature, body, &tls, report).await;
            });
        }
    }
}

/// POSTs one batch, retrying with exponential back-off for up to five minutes.
async fn deliver(
    app_id: &str,
    uri: &Uri,
    key: &str,
    signature: &str,
    body: Bytes,
    tls: &TlsConnector,
    report: impl Fn(&str, Option<u16>),
) {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        match post(uri, key, signature, body.clone(), tls).await {
            Ok(status) if (200..300).contains(&status) => {
                metrics::counter!("herald_webhooks_sent_total", "outcome" => "delivered")
                    .increment(1);
                report("delivered", Some(status));
                return;
            }
            Ok(status) => {
                tracing::warn!(app = %app_id, status, "webhook refused; will retry");
                report("refused", Some(status));
            }
            Err(e) => {
                tracing::warn!(app = %app_id, error = %e, "webhook delivery failed; will retry");
                report("failed", None);
            }
        }
        if started.elapsed() + backoff > RETRY_FOR {
            metrics::counter!("herald_webhooks_sent_total", "outcome" => "gave_up").increment(1);
            report("gave_up", None);
            tracing::error!(app = %app_id, "webhook batch dropped after retrying for 5 minutes");
            return;
        }
        metrics::counter!("herald_webhooks_sent_total", "outcome" => "retried").increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

async fn post(
    uri: &Uri,
    key: &str,
    signature: &str,
    body: Bytes,
    tls: &TlsConnector,
) -> Result<u16, String> {
    let host = uri.host().ok_or("URL without a host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    let request = Request::builder()
        .method("POST")
        .uri(path)
        .header(
            hyper::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("X-Pusher-Key", key)
        .header("X-Pusher-Signature", signature)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let tcp = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "connect timed out")?
        .map_err(|e| e.to_string())?;
    let send = async {
        if https {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| e.to_string())?;
            let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
            send(TokioIo::new(stream), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    };
    tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .map_err(|_| "request timed out".to_owned())?
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

fn tls_connector() -> TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system CA certificates found: https:// webhooks will fail");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    // The ring provider supports the default protocol versions, so this cannot fail.
    #[allow(clippy::expect_used)]
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}
