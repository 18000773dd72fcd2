//! A webhook receiver for tests: a hyper server on 127.0.0.1 that records every request and can
//! refuse the first few with 500.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Received {
    pub content_type: String,
    pub key: String,
    pub signature: String,
    pub body: String,
    pub json: Value,
}

#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Received>>>,
    refuse_first: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start(refuse_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Receiver {
            port,
            got: Arc::default(),
            refuse_first: Arc::new(AtomicUsize::new(refuse_first)),
            refused: Arc::default(),
        };
        let server = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let r = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let r = r.clone();
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            let (content_type, key, signature) = (
                                header("content-type"),
                                header("x-pusher-key"),
                                header("x-pusher-signature"),
                            );
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let status = if r.refuse_first.load(Ordering::SeqCst) > 0 {
                                r.refuse_first.fetch_sub(1, Ordering::SeqCst);
                                r.refused.fetch_add(1, Ordering::SeqCst);
                                500
                            } else {
                                let body = String::from_utf8_lossy(&body).into_owned();
                                let json = serde_json::from_str(&body).unwrap_or(Value::Null);
                                r.got.lock().push(Received {
                                    content_type,
                                    key,
                                    signature,
                                    body,
                                    json,
                                });
                                200
                            };
                            let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
                            *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/pusher/webhooks", self.port)
    }

    /// Every event received so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.got
            .lock()
            .iter()
            .flat_map(|r| r.json["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until an event matching `pred` has arrived; returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no {what} webhook within {wait:?}; got {:?}", self.events());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events().iter().filter(|e| pred(e)).count()
    }
}
