//! Test harness: servers started in-process on 127.0.0.1:0, stopped by the
//! handle (explicitly with `stop`, or on drop).

#![allow(dead_code)] // each test crate uses a different part of the harness

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parley::proto::router_client::RouterClient;
use parley::registry::MemoryRegistry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A router serving an in-memory registry on an ephemeral loopback port.
pub struct TestRouter {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestRouter {
    pub async fn start(ttl: Duration) -> TestRouter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, ttl).await
    }

    /// Starts a router on an already bound listener (to restart one on the
    /// same port).
    pub async fn start_on(listener: tokio::net::TcpListener, ttl: Duration) -> TestRouter {
        let addr = listener.local_addr().unwrap();
        let registry = Arc::new(MemoryRegistry::new(ttl).unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            parley::router::serve(listener, registry, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestRouter {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> RouterClient<Channel> {
        RouterClient::connect(self.url()).await.unwrap()
    }

    /// Stops the router and waits until it has shut down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("router did not stop within 10 s")
                .unwrap();
        }
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
