//! A TCP proxy for fault injection between a client (the operator) and a server (the API
//! server): it forwards bytes unchanged (TLS passes through end to end), can delay every chunk
//! by a fixed latency, and can be switched to drop everything — cutting the open connections
//! and closing each new one at once — until it is switched back.
//!
//! Plain std threads, no async runtime: an accept thread, and per connection one reader and one
//! writer thread per direction, so latency delays each chunk without limiting throughput.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

struct Shared {
    upstream: SocketAddr,
    latency_ms: AtomicU64,
    dropping: AtomicBool,
    stopped: AtomicBool,
    accepted: AtomicUsize,
    dropped_at_accept: AtomicUsize,
    next_id: AtomicU64,
    /// Both sockets of every open connection, so dropping mode can cut them.
    live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

impl Shared {
    fn cut_all(&self) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (client, server) in live.values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    fn forget(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// A running proxy on 127.0.0.1; stops (and cuts every connection) when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            latency_ms: AtomicU64::new(0),
            dropping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            dropped_at_accept: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            live: Mutex::default(),
        });
        let accept_shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("spawn the proxy's accept thread");
        Proxy { addr, shared }
    }

    /// Delay added to every chunk, in both directions, from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// `true`: cut every open connection and close new ones at once; `false`: forward again.
    pub fn set_dropping(&self, dropping: bool) {
        self.shared.dropping.store(dropping, Ordering::SeqCst);
        if dropping {
            self.shared.cut_all();
        }
    }

    /// Connections accepted so far (forwarded or dropped).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was dropping.
    pub fn dropped_connections(&self) -> usize {
        self.shared.dropped_at_accept.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.dropping.store(true, Ordering::SeqCst);
        self.shared.cut_all();
        // Wake the accept thread so it sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.dropping.load(Ordering::SeqCst) {
            shared.dropped_at_accept.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))
        else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (client2, server2));
        let finished = Arc::new(AtomicUsize::new(0));
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let (shared, finished) = (Arc::clone(&shared), Arc::clone(&finished));
            let _ = thread::Builder::new()
                .name("proxy-pump".into())
                .spawn(move || {
                    pump(from, to, &shared);
                    if finished.fetch_add(1, Ordering::SeqCst) == 1 {
                        shared.forget(id);
                    }
                });
        }
    }
}

/// Copies `from` to `to`, each chunk no sooner than the latency after it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Arc<Shared>) {
    let (sender, receiver) = mpsc::channel::<Option<(Instant, Vec<u8>)>>();
    let reader_to = to.try_clone().ok();
    let from_again = from.try_clone().ok();
    let reader_shared = Arc::clone(shared);
    let reader = thread::Builder::new()
        .name("proxy-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = sender.send(None);
                        return;
                    }
                    Ok(n) => {
                        let latency = reader_shared.latency_ms.load(Ordering::SeqCst);
                        let due = Instant::now() + Duration::from_millis(latency);
                        if sender.send(Some((due, buf[..n].to_vec()))).is_err() {
                            let _ = from.shutdown(Shutdown::Both);
                            if let Some(to) = &reader_to {
                                let _ = to.shutdown(Shutdown::Both);
                            }
                            return;
                        }
                    }
                }
            }
        });
    while let Ok(Some((due, chunk))) = receiver.recv() {
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        if shared.dropping.load(Ordering::SeqCst) || to.write_all(&chunk).is_err() {
            let _ = to.shutdown(Shutdown::Both);
            if let Some(from) = &from_again {
                let _ = from.shutdown(Shutdown::Both);
            }
            drop(receiver);
            if let Ok(reader) = reader {
                let _ = reader.join();
            }
            return;
        }
    }
    // End of stream (or the reader failed): pass the half-close on.
    let _ = to.shutdown(Shutdown::Write);
    if let Ok(reader) = reader {
        let _ = reader.join();
    }
}
