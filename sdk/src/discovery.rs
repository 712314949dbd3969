//! Node discovery, the I/O half: fetching the gateway node list from the registries over
//! HTTP/1.1 and keeping it in the state dir. The policy (which node, cool-downs, when to fetch
//! again) is the sans-I/O [`NodeDirectory`] of the core; [`crate::Client`] drives both.
//!
//! The registries speak the REST API of Netflix Eureka (docs/registry.md): the list is
//! `GET {registry}/apps/{app}` with `Accept: application/json`. Registries are tried in turn,
//! starting with the one that answered last; a connection error, a timeout, a 5xx or an answer
//! that cannot be read moves on to the next. `http://` and `https://` URLs both work; an
//! `https://` registry is verified with the client's [`Trust`], like the nodes.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

pub use crate::core::discovery::{
    parse_application, DiscoveredNode, DiscoveryConfig, DiscoveryError, NodeCache, NodeDirectory, NodeStatus,
    DEFAULT_REGISTRY_APP,
};
use crate::tls::Trust;

/// File in the state dir that keeps the last node list.
pub const NODE_CACHE_FILE: &str = "nodes.json";
const NODE_CACHE_TMP: &str = "nodes.json.tmp";
/// Largest registry answer read (a listing of thousands of nodes fits).
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Why the node list could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A registry URL is unusable.
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The application name is unusable in a URL path.
    #[error("invalid registry application name {0:?}")]
    InvalidApp(String),
    /// TLS setup for `https://` registries failed.
    #[error("registry tls: {0}")]
    Tls(String),
    /// No registry URL was given.
    #[error("no registry configured")]
    NoRegistry,
    /// Connecting, sending or reading failed.
    #[error("{url}: {error}")]
    Unreachable {
        /// The registry.
        url: String,
        /// What failed.
        error: String,
    },
    /// No complete answer in time.
    #[error("{url}: no answer within {timeout:?}")]
    Timeout {
        /// The registry.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// An answer other than 200 (or 404: no such application, read as no nodes).
    #[error("{url} answered {status}")]
    Status {
        /// The registry.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The answer could not be read.
    #[error("{url}: {error}")]
    Decode {
        /// The registry.
        url: String,
        /// Why.
        error: DiscoveryError,
    },
}

/// Fetches the node list from one of several registries. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    http: HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Each registry's base URL (as given) and the application's URI under it.
    apps: Vec<(String, Uri)>,
    timeout: Duration,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registries", &self.apps.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Whether `app` can go into a URL path as it is (Eureka application names are such).
fn valid_app(app: &str) -> bool {
    !app.is_empty() && app.len() <= 128 && app.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

/// `{base}/apps/{app}` for a base URL such as `http://10.0.0.5:8761/eureka/`.
fn app_uri(base: &str, app: &str) -> Result<Uri, RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidUrl { url: base.to_owned(), reason: reason.to_owned() };
    let trimmed = base.trim();
    let lower = trimmed.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(invalid("only http:// and https:// URLs are supported"));
    }
    if trimmed.contains(['?', '#']) {
        return Err(invalid("a base URL has no query or fragment"));
    }
    let base_uri: Uri = trimmed.parse().map_err(|_| invalid("not a URL"))?;
    match base_uri.authority() {
        Some(a) if a.as_str().contains('@') => return Err(invalid("credentials in the URL are not supported")),
        Some(a) if !a.host().is_empty() => {}
        _ => return Err(invalid("missing host")),
    }
    let sep = if trimmed.ends_with('/') { "" } else { "/" };
    format!("{trimmed}{sep}apps/{app}").parse().map_err(|_| invalid("not a URL"))
}

impl RegistryClient {
    /// A client for the registries at `urls` (Eureka base URLs such as
    /// `http://10.0.0.5:8761/eureka/`), fetching application `app`, each request bounded by
    /// `timeout`; `https://` registries are verified with `trust`.
    pub fn new(urls: &[String], app: &str, trust: &Trust, timeout: Duration) -> Result<Self, RegistryError> {
        if !valid_app(app) {
            return Err(RegistryError::InvalidApp(app.to_owned()));
        }
        let apps = urls
            .iter()
            .map(|u| Ok((u.trim().to_owned(), app_uri(u, app)?)))
            .collect::<Result<Vec<_>, RegistryError>>()?;
        if apps.is_empty() {
            return Err(RegistryError::NoRegistry);
        }
        let https = apps.iter().any(|(_, uri)| uri.scheme_str() == Some("https"));
        let tls = if https { crate::tls::http_crypto(trust) } else { crate::tls::http_crypto_trusting_nothing() }
            .map_err(|e| RegistryError::Tls(e.to_string()))?;
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HttpClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(RegistryClient { http, apps, timeout })
    }

    /// How many registries there are.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether there are none (never: [`RegistryClient::new`] refuses an empty list).
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// Fetches the node list, trying the registries in turn from index `first` on. Returns the
    /// index of the registry that answered (start there next time) and the nodes (none when
    /// the registry does not know the application); the last error when none answered.
    pub async fn fetch(&self, first: usize) -> Result<(usize, Vec<DiscoveredNode>), RegistryError> {
        let mut last = RegistryError::NoRegistry;
        for k in 0..self.apps.len() {
            let i = (first + k) % self.apps.len();
            match self.fetch_one(i).await {
                Ok(nodes) => return Ok((i, nodes)),
                Err(e) => {
                    tracing::debug!(error = %e, "registry did not answer; trying the next one");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn fetch_one(&self, i: usize) -> Result<Vec<DiscoveredNode>, RegistryError> {
        let (url, uri) = &self.apps[i];
        let unreachable = |error: String| RegistryError::Unreachable { url: url.clone(), error };
        let req = Request::get(uri.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("tether-sdk/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = async {
            let resp = self.http.request(req).await.map_err(|e| unreachable(error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, RegistryError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| RegistryError::Timeout { url: url.clone(), timeout: self.timeout })??;
        match status {
            StatusCode::OK => {
                parse_application(&body).map_err(|error| RegistryError::Decode { url: url.clone(), error })
            }
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            other => Err(RegistryError::Status { url: url.clone(), status: other.as_u16() }),
        }
    }
}

/// An error with its sources (hyper's own message is often just "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The node list kept in `dir`, if there is a readable one.
pub fn load_cache(dir: &Path) -> Option<NodeCache> {
    let bytes = std::fs::read(dir.join(NODE_CACHE_FILE)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::warn!(error = %e, "the node cache in the state dir is unreadable; ignored");
            None
        }
    }
}

/// Keeps `cache` in `dir` (written to a temporary file, then renamed over the old one, so a
/// crash leaves the old list or the new one, never half of one).
pub fn save_cache(dir: &Path, cache: &NodeCache) -> std::io::Result<()> {
    let json = serde_json::to_vec(cache).map_err(std::io::Error::other)?;
    let tmp = dir.join(NODE_CACHE_TMP);
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, dir.join(NODE_CACHE_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_are_checked() {
        let uri = app_uri("http://10.0.0.5:8761/eureka/", "TETHER").expect("ok");
        assert_eq!(uri.to_string(), "http://10.0.0.5:8761/eureka/apps/TETHER");
        let uri = app_uri(" https://reg.example/eureka/v2 ", "TETHER").expect("ok");
        assert_eq!(uri.to_string(), "https://reg.example/eureka/v2/apps/TETHER");
        for bad in ["10.0.0.5:8761/eureka/", "ftp://x/", "http://", "http://u:p@x/eureka/", "http://x/?a=b"] {
            assert!(matches!(app_uri(bad, "TETHER"), Err(RegistryError::InvalidUrl { .. })), "{bad}");
        }
        assert!(valid_app("TETHER") && valid_app("my-app_2"));
        assert!(!valid_app("") && !valid_app("a/b") && !valid_app("a b"));
    }

    #[tokio::test]
    async fn a_client_needs_a_registry_and_a_usable_app_name() {
        let urls = vec!["http://127.0.0.1:1/eureka/".to_string()];
        assert_eq!(
            RegistryClient::new(&[], "TETHER", &Trust::SystemRoots, Duration::from_secs(1)).err(),
            Some(RegistryError::NoRegistry)
        );
        assert!(matches!(
            RegistryClient::new(&urls, "A/B", &Trust::SystemRoots, Duration::from_secs(1)),
            Err(RegistryError::InvalidApp(_))
        ));
    }

    #[tokio::test]
    async fn every_registry_is_tried_and_the_one_that_answered_is_named() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // One registry is down (nothing listens), one answers with one node.
        let down = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let down_addr = down.local_addr().expect("addr");
        drop(down);
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up_addr = up.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = up.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let (status, body) = if req.starts_with("GET /eureka/apps/TETHER ") && req.contains("application/json")
                {
                    (
                        "200 OK",
                        r#"{"application":{"name":"TETHER","instance":{"instanceId":"n1","status":"UP","metadata":{"quic":"127.0.0.1:7443","sessions":"2"}}}}"#,
                    )
                } else {
                    ("404 Not Found", "")
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let urls = vec![format!("http://{down_addr}/eureka/"), format!("http://{up_addr}/eureka")];
        let client = RegistryClient::new(&urls, "TETHER", &Trust::SystemRoots, Duration::from_secs(2)).expect("client");
        let (i, nodes) = client.fetch(0).await.expect("the second registry answers");
        assert_eq!(i, 1);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].address, "127.0.0.1:7443");
        assert_eq!(nodes[0].sessions, Some(2));
        // An application the registry does not know: no nodes, not an error.
        let other = RegistryClient::new(&urls[1..], "OTHER", &Trust::SystemRoots, Duration::from_secs(2)).expect("c");
        assert_eq!(other.fetch(0).await.expect("answered").1, []);
        // Every registry down: the last error.
        let none = RegistryClient::new(&urls[..1], "TETHER", &Trust::SystemRoots, Duration::from_secs(2)).expect("c");
        assert!(matches!(none.fetch(0).await, Err(RegistryError::Unreachable { .. })), "down");
    }

    #[test]
    fn the_cache_file_round_trips() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(load_cache(dir.path()), None);
        let cache = NodeCache {
            app: "TETHER".into(),
            fetched_ms: 1,
            nodes: vec![DiscoveredNode {
                instance_id: "n1".into(),
                address: "127.0.0.1:7443".into(),
                status: NodeStatus::Up,
                sessions: Some(3),
                zone: Some("z".into()),
            }],
        };
        save_cache(dir.path(), &cache).expect("save");
        assert_eq!(load_cache(dir.path()), Some(cache));
        std::fs::write(dir.path().join(NODE_CACHE_FILE), b"{not json").expect("write");
        assert_eq!(load_cache(dir.path()), None);
    }
}
