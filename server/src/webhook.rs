//! Webhooks to the app's backend: session connected/disconnected, room entered/quit.
//!
//! Events go into a bounded queue and are POSTed, in order, by one background task, so they
//! never slow message flow. A failed POST is retried with exponential backoff (250 ms doubling
//! to 30 s) until the receiver answers 2xx; while it is down events wait in the queue, and past
//! `--webhook-queue` new events are dropped and counted. Each request carries
//! `X-Tether-Timestamp` (ms) and `X-Tether-Signature: sha256=<hex HMAC-SHA256 of
//! "<timestamp>.<body>" with --webhook-secret>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::ids::now_ms;
use crate::metrics::Metrics;

/// The sending side of the webhook queue; a no-op when no URL is configured.
#[derive(Clone)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Value>>,
    node: String,
    seq: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

/// Signature header value for `body` sent at `ts_ms`.
pub fn signature(secret: &str, ts_ms: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(ts_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhooks {
    /// Starts the sender task when `url` is set.
    pub fn start(url: Option<String>, secret: String, queue: usize, node: String, metrics: Arc<Metrics>) -> Self {
        let tx = url.map(|url| {
            let (tx, rx) = mpsc::channel(queue.max(1));
            tokio::spawn(run(url, secret, rx, metrics.clone()));
            tx
        });
        Webhooks { tx, node, seq: Arc::new(AtomicU64::new(1)), metrics }
    }

    /// Queues an event of `kind` with these fields (plus id, type, ts and node).
    pub fn emit(&self, kind: &str, mut fields: Value) {
        let Some(tx) = &self.tx else { return };
        let id = format!("{}-{}-{}", self.node, now_ms(), self.seq.fetch_add(1, Ordering::Relaxed));
        if let Some(obj) = fields.as_object_mut() {
            obj.insert("id".into(), json!(id));
            obj.insert("type".into(), json!(kind));
            obj.insert("ts".into(), json!(now_ms()));
            obj.insert("node".into(), json!(self.node));
        }
        if tx.try_send(fields).is_err() {
            self.metrics.webhooks.get_or_create(&crate::metrics::ResultLabel { result: "dropped".into() }).inc();
        }
    }
}

async fn run(url: String, secret: String, mut rx: mpsc::Receiver<Value>, metrics: Arc<Metrics>) {
    let https = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::error!(error = %e, "webhooks disabled: no TLS roots");
            return;
        }
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let count =
        |result: &str| metrics.webhooks.get_or_create(&crate::metrics::ResultLabel { result: result.into() }).inc();
    while let Some(event) = rx.recv().await {
        let body = Bytes::from(event.to_string());
        let mut delay = Duration::from_millis(250);
        loop {
            let ts = now_ms();
            let req = hyper::Request::post(url.as_str())
                .header("content-type", "application/json")
                .header("x-tether-timestamp", ts.to_string())
                .header("x-tether-signature", signature(&secret, ts, &body))
                .body(Full::new(body.clone()));
            let req = match req {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, %url, "webhooks disabled: bad URL");
                    return;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    count("ok");
                    break;
                }
                Ok(Ok(resp)) => tracing::debug!(status = %resp.status(), "webhook refused; will retry"),
                Ok(Err(e)) => tracing::debug!(error = %e, "webhook failed; will retry"),
                Err(_) => tracing::debug!("webhook timed out; will retry"),
            }
            count("retry");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_timestamp_and_body() {
        let a = signature("s", 1, b"{}");
        assert!(a.starts_with("sha256="));
        assert_eq!(a.len(), 7 + 64);
        assert_ne!(a, signature("s", 2, b"{}"));
        assert_ne!(a, signature("s", 1, b"{ }"));
        assert_ne!(a, signature("t", 1, b"{}"));
    }
}
