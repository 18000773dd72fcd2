//! The floor under a fan-out on this machine: one small message written to each of N loopback
//! TCP connections, read by the lightest receiver possible (one thread, epoll, no parsing), in
//! waves some milliseconds apart. A wave is done when the receiver has read the last byte.
//!
//! Modes (how the N writes are issued):
//!   write   one thread, one send(2) per socket
//!   write2  two threads, half the sockets each
//!   uring   one thread, all N sends submitted to io_uring at once (up to 1,024 per submit)
//!   tasks   a tokio task per socket, woken by a Notify, writing with try_write (the shape of a
//!           server that wakes each subscriber's task)
//!   direct  one tokio task writing to every socket with try_write
//!
//! Usage: loopback-floor CONNECTIONS MODE [WAVES] [PAYLOAD_BYTES]
//! (CONNECTIONS is limited by the open-files limit: two descriptors per connection.)

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Bytes read so far, and when each read of the current wave happened.
#[derive(Default)]
struct Received {
    bytes: AtomicU64,
    arrivals: std::sync::Mutex<Vec<u64>>,
}

/// Per-wave figures, in ms from the wave's first write: the deliveries' p50 and p99 and the
/// last delivery.
#[derive(Default)]
struct Waves {
    p50: Vec<f64>,
    p99: Vec<f64>,
    last: Vec<f64>,
}

impl Waves {
    /// Takes the finished wave's arrivals; keeps its figures unless it was a warm-up wave.
    fn record(&mut self, received: &Received, start: u64, keep: bool) {
        let arrivals = std::mem::take(&mut *received.arrivals.lock().expect("arrivals"));
        let mut ms: Vec<f64> = arrivals
            .into_iter()
            .map(|t| t.saturating_sub(start) as f64 / 1e6)
            .collect();
        if keep && !ms.is_empty() {
            self.p50.push(percentile(&mut ms, 0.5));
            self.p99.push(percentile(&mut ms, 0.99));
            self.last.push(percentile(&mut ms, 1.0));
        }
    }
}

fn receiver(sockets: Vec<TcpStream>, received: Arc<Received>) {
    // SAFETY: plain epoll calls on descriptors this thread owns for its whole life.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0, "epoll_create1");
    for (i, s) in sockets.iter().enumerate() {
        s.set_nonblocking(true).expect("nonblocking");
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        // SAFETY: as above.
        let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
        assert_eq!(r, 0, "epoll_ctl");
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `events` outlives the call and holds 1,024 entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 1024, -1) };
        for ev in &events[..n.max(0) as usize] {
            let mut s = &sockets[ev.u64 as usize];
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    return;
                }
                // The time first: whoever sees the count complete sees this read's time.
                if let Ok(mut a) = received.arrivals.lock() {
                    a.push(now_ns());
                }
                received.bytes.fetch_add(k as u64, Ordering::Release);
            }
        }
    }
}

fn send_all(fds: &[i32], msg: &[u8]) {
    for &fd in fds {
        // SAFETY: `msg` is valid for its length; fd is an open socket.
        let r = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_DONTWAIT) };
        assert_eq!(r, msg.len() as isize, "a short or failed send");
    }
}

fn send_uring(ring: &mut io_uring::IoUring, fds: &[i32], msg: &[u8]) {
    for chunk in fds.chunks(1024) {
        {
            let mut sq = ring.submission();
            for &fd in chunk {
                let e = io_uring::opcode::Send::new(
                    io_uring::types::Fd(fd),
                    msg.as_ptr(),
                    msg.len() as u32,
                )
                .flags(libc::MSG_DONTWAIT)
                .build();
                // SAFETY: `msg` outlives the submission, which is waited for below.
                unsafe { sq.push(&e).expect("submission queue has room") };
            }
        }
        ring.submit_and_wait(chunk.len()).expect("io_uring submit");
        for cqe in ring.completion() {
            assert_eq!(cqe.result(), msg.len() as i32, "a short or failed send");
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: loopback-floor CONNECTIONS write|write2|uring|tasks|direct [WAVES] [PAYLOAD]";
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let mode = args.get(2).cloned().expect(usage);
    let waves: usize = args.get(3).map_or(200, |a| a.parse().expect(usage));
    let payload: usize = args.get(4).map_or(120, |a| a.parse().expect(usage));
    let warmup = (waves / 10).max(1);

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let (mut senders, mut readers) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let r = TcpStream::connect(addr).expect("connect (open-files limit?)");
        let (s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        senders.push(s);
        readers.push(r);
    }
    let received = Arc::new(Received::default());
    {
        let received = received.clone();
        std::thread::spawn(move || receiver(readers, received));
    }
    let msg = vec![b'x'; payload];
    let expected = |before: u64| before + (n * payload) as u64;
    let mut figures = Waves::default();
    let mut cpu_us = Vec::new();

    if mode == "tasks" || mode == "direct" {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut wakers = Vec::new();
            let mut streams = Vec::new();
            for s in senders.drain(..) {
                s.set_nonblocking(true).expect("nonblocking");
                let stream = Arc::new(tokio::net::TcpStream::from_std(s).expect("register"));
                let notify = Arc::new(tokio::sync::Notify::new());
                if mode == "tasks" {
                    let (notify, stream, msg) = (notify.clone(), stream.clone(), msg.clone());
                    tokio::spawn(async move {
                        loop {
                            notify.notified().await;
                            let k = stream.try_write(&msg).expect("write");
                            assert_eq!(k, msg.len(), "a short write");
                        }
                    });
                }
                wakers.push(notify);
                streams.push(stream);
            }
            let (wakers, streams) = (Arc::new(wakers), Arc::new(streams));
            for w in 0..waves + warmup {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let before = received.bytes.load(Ordering::Relaxed);
                let start = now_ns();
                let (wakers, streams, msg, direct) = (
                    wakers.clone(),
                    streams.clone(),
                    msg.clone(),
                    mode == "direct",
                );
                tokio::spawn(async move {
                    if direct {
                        for s in streams.iter() {
                            let k = s.try_write(&msg).expect("write");
                            assert_eq!(k, msg.len(), "a short write");
                        }
                    } else {
                        for w in wakers.iter() {
                            w.notify_one();
                        }
                    }
                })
                .await
                .expect("the wave's task");
                while received.bytes.load(Ordering::Acquire) < expected(before) {
                    tokio::task::yield_now().await;
                }
                figures.record(&received, start, w >= warmup);
            }
        });
    } else {
        let fds: Vec<i32> = senders.iter().map(|s| s.as_raw_fd()).collect();
        let mut ring = io_uring::IoUring::new(1024).expect("io_uring (kernel.io_uring_disabled?)");
        for w in 0..waves + warmup {
            std::thread::sleep(Duration::from_millis(20));
            let before = received.bytes.load(Ordering::Relaxed);
            let start = now_ns();
            let cpu_start = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
            match mode.as_str() {
                "write" => send_all(&fds, &msg),
                "write2" => {
                    let (a, b) = fds.split_at(fds.len() / 2);
                    std::thread::scope(|s| {
                        s.spawn(|| send_all(a, &msg));
                        send_all(b, &msg);
                    });
                }
                "uring" => send_uring(&mut ring, &fds, &msg),
                _ => panic!("{usage}"),
            }
            let cpu = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu_start;
            while received.bytes.load(Ordering::Acquire) < expected(before) {
                std::hint::spin_loop();
            }
            if w >= warmup {
                cpu_us.push(cpu as f64 / n as f64 / 1e3);
            }
            figures.record(&received, start, w >= warmup);
        }
    }
    let cpu = if cpu_us.is_empty() {
        String::new()
    } else {
        format!(
            ", sending thread CPU {:.2} µs per message (p50)",
            percentile(&mut cpu_us, 0.5)
        )
    };
    println!(
        "{mode}: {n} connections, {waves} waves of {payload} bytes: per wave (median over waves) \
         delivery p50 {:.2} ms, p99 {:.2} ms, last {:.2} ms{cpu}",
        percentile(&mut figures.p50, 0.5),
        percentile(&mut figures.p99, 0.5),
        percentile(&mut figures.last, 0.5),
    );
}
