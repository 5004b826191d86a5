//! What the fake servers have in common: an axum router served on its own task until the last
//! handle drops, and the state the handlers and the handles share.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

pub(crate) struct Served<S> {
    pub(crate) shared: Arc<S>,
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Served<S> {
    /// Binds `addr` and serves `app` (built on `shared`) until dropped.
    pub(crate) async fn start(
        addr: SocketAddr,
        shared: Arc<S>,
        app: axum::Router,
        name: &'static str,
    ) -> std::io::Result<Served<S>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("{name}: server stopped: {e}");
            }
        });
        Ok(Served { shared, addr, task })
    }

    /// `http://127.0.0.1:PORT` (a wildcard bind is reached through loopback).
    pub(crate) fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }
}

impl<S> Drop for Served<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
