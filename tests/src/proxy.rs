//! A TCP proxy a test can cut: stands for a network partition or a failover between a service
//! and Postgres (or Redis) without touching the machine's shared servers.
//!
//! While cut, every open connection is closed and new ones are refused at once (the listener
//! is closed), as clients see a server that went away; `restore` listens again on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    listener: Mutex<Option<JoinHandle<()>>>,
    stalled: tokio::sync::watch::Sender<bool>,
    deaf: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let proxy = Proxy {
            addr,
            upstream,
            tasks: Arc::default(),
            listener: Mutex::new(None),
            stalled: tokio::sync::watch::channel(false).0,
            deaf: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream, self.tasks.clone());
        let (stalled, deaf) = (self.stalled.clone(), self.deaf.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let stalled = stalled.subscribe();
                let deaf = deaf.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let never = Arc::default();
                        tokio::join!(
                            forward(cr, sw, stalled.clone(), never),
                            forward(sr, cw, stalled, deaf)
                        );
                    }
                });
                if let Ok(mut t) = tasks.lock() {
                    t.retain(|h| !h.is_finished());
                    t.push(pipe);
                }
            }
        });
        if let Ok(mut l) = self.listener.lock() {
            *l = Some(accept);
        }
    }

    /// Keeps every connection open but passes no byte either way (a server that hangs, like
    /// Redis under `DEBUG SLEEP`), until [`Proxy::unstall`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn unstall(&self) {
        self.stalled.send_replace(false);
    }

    /// Passes requests on but throws the server's replies away: every command runs, and the
    /// client never learns how it went (a reply lost on the way back), until [`Proxy::hear`].
    pub fn deafen(&self) {
        self.deaf.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes the connections whose replies were thrown away (they no longer line up with their
    /// requests) and passes replies again on the new ones.
    pub fn hear(&self) {
        self.close_connections();
        self.deaf.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        if let Some(accept) = self.listener.lock().ok().and_then(|mut l| l.take()) {
            accept.abort();
        }
        self.close_connections();
    }

    fn close_connections(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            t.drain(..).for_each(|h| h.abort());
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        // The aborted accept task may take a moment to release the port.
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("proxy could not listen on {} again", self.addr);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to`, holding bytes back while stalled and dropping them while deaf.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
    deaf: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            break;
        }
        if deaf.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// `url` (`postgres://…@host:port/…` or `redis://…`) with its host and port replaced by `addr`.
pub fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url with a scheme");
    let (auth, hostpath) = match rest.split_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
    format!("{scheme}://{auth}{addr}{path}")
}

/// The `host:port` a URL points at, resolved.
pub fn target(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostpath = rest.split_once('@').map_or(rest, |(_, h)| h);
    let host = hostpath.split('/').next().unwrap_or(hostpath);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    host.to_socket_addrs()
        .expect("resolve")
        .next()
        .expect("an address")
}
