//! A TCP proxy for fault tests: forwards to a target port until told to freeze (connections
//! stay open, nothing passes: a partition as TCP sees it), to cut every connection (a network
//! reset), or to refuse new connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub port: u16,
    frozen: watch::Sender<bool>,
    refusing: Arc<AtomicBool>,
    /// Cancelled to cut the current connections; replaced after each cut.
    cut: Arc<parking_lot::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = watch::channel(false);
        let refusing = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(parking_lot::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (f, r, c, s) = (frozen.clone(), refusing.clone(), cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = s.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                if r.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let token = c.lock().clone();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, f.subscribe(), token.clone()));
                tokio::spawn(pump(sr, cw, f.subscribe(), token));
            }
        });
        Proxy {
            port,
            frozen,
            refusing,
            cut,
            stop,
        }
    }

    /// Nothing passes in either direction; connections stay open.
    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }

    pub fn thaw(&self) {
        let _ = self.frozen.send(false);
    }

    /// Closes every current connection.
    pub fn cut(&self) {
        let mut token = self.cut.lock();
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Closes new connections at once (with [`Proxy::cut`]: the peer is unreachable).
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().cancel();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    cut: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Held while frozen: nothing is read, so nothing is acknowledged past the kernel
        // buffers, as in a partition.
        while *frozen.borrow_and_update() {
            tokio::select! {
                r = frozen.changed() => if r.is_err() { return },
                _ = cut.cancelled() => return,
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.cancelled() => return,
            _ = frozen.changed() => continue,
        };
        while *frozen.borrow_and_update() {
            tokio::select! {
                r = frozen.changed() => if r.is_err() { return },
                _ = cut.cancelled() => return,
            }
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            _ = cut.cancelled() => return,
        }
    }
}
