//! A TCP proxy in front of the test Redis that can be cut and restored: a Redis outage
//! (restart, lost network) that only the test's own connections see.

use std::net::SocketAddr;

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// Forwards connections to Redis while up; while cut, closes every forwarded connection
/// and closes new ones at once.
pub struct Proxy {
    url: String,
    up: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy for the Redis at `redis_url`, initially up or cut.
    pub async fn start(redis_url: &str, up: bool) -> Proxy {
        let (scheme, rest) = redis_url.split_once("://").expect("URL has a scheme");
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, host_port) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:6379")
        };
        let target = tokio::net::lookup_host(&host_port)
            .await
            .expect("test Redis host resolves")
            .next()
            .expect("test Redis host has an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (tx, rx) = watch::channel(up);
        let task = tokio::spawn(accept(listener, target, rx));
        Proxy {
            url: format!("{scheme}://{userinfo}{addr}{tail}"),
            up: tx,
            task,
        }
    }

    /// The URL that goes through the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Forwarded connections end too: their watch sender is gone.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, up: watch::Receiver<bool>) {
    while let Ok((mut client, _)) = listener.accept().await {
        if !*up.borrow() {
            drop(client);
            continue;
        }
        let mut up = up.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = up.wait_for(|up| !*up) => {}
            }
        });
    }
}
