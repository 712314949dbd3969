//! Plain-HTTP plumbing shared by the client and peer replication: base URLs, path and query
//! encoding, and one request with a timeout and a bounded response body.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::codec::Format;

/// Largest response body read from a registry (a full listing of many thousand instances fits).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// A registry's base URL such as `http://10.0.0.5:8761/eureka/` (plain HTTP; always ends in `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl {
    authority: String,
    path: String,
}

/// A URL that is not a usable registry base URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid registry URL {url:?}: {reason}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl BaseUrl {
    /// Parses `http://host:port/path/`; the path defaults to `/` and gets a trailing `/`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let err = |reason| UrlError { url: url.into(), reason };
        let trimmed = url.trim();
        let rest = match trimmed.get(..7) {
            Some(s) if s.eq_ignore_ascii_case("http://") => &trimmed[7..],
            _ => return Err(err("only http:// URLs are supported")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(err("missing host"));
        }
        if authority.contains('@') {
            return Err(err("credentials in the URL are not supported"));
        }
        match authority.parse::<hyper::http::uri::Authority>() {
            Ok(_) if port_is_valid(authority) => {}
            _ => return Err(err("bad host or port")),
        }
        if path.contains(['?', '#']) {
            return Err(err("a base URL has no query or fragment"));
        }
        let mut path = path.to_string();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(Self { authority: authority.to_string(), path })
    }

    /// The `host:port` part.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The URI of `relative` (already encoded, no leading `/`) under this base.
    pub(crate) fn join(&self, relative: &str) -> Result<Uri, UrlError> {
        let s = format!("http://{}{}{}", self.authority, self.path, relative);
        s.parse().map_err(|_| UrlError { url: s.clone(), reason: "cannot build a request URI" })
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Whether the port of `host[:port]` / `[v6][:port]`, if any, is a u16.
fn port_is_valid(authority: &str) -> bool {
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    after_host.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_ok())
}

fn encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes one path segment (`:` is kept, as in Eureka instance ids).
pub(crate) fn path_segment(s: &str) -> String {
    encode(s, |b| b == b':')
}

/// Builds a query string from pairs.
pub(crate) fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", encode(k, |_| false), encode(v, |_| false)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(String),
    /// No complete answer within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The response body exceeded the limit.
    #[error("response body larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// An answer: status, content type and body.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(500).collect()
    }
}

/// A pooled plain-HTTP/1 client with a per-request timeout.
#[derive(Clone)]
pub(crate) struct Transport {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").field("timeout", &self.timeout).finish()
    }
}

impl Transport {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Self { client, timeout }
    }

    /// Sends one request. `body` is sent with its format's content type; answers are asked for
    /// in JSON.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        extra_headers: &[(HeaderName, HeaderValue)],
        body: Option<(Format, String)>,
    ) -> Result<Answer, TransportError> {
        let mut req = Request::builder().method(method).uri(uri).header(ACCEPT, "application/json");
        for (k, v) in extra_headers {
            req = req.header(k, v);
        }
        let req = match body {
            Some((format, text)) => req.header(CONTENT_TYPE, format.content_type()).body(Full::new(Bytes::from(text))),
            None => req.body(Full::new(Bytes::new())),
        }
        .map_err(|e| TransportError::Io(e.to_string()))?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| TransportError::Io(error_chain(&e)))?;
            let status = resp.status();
            let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    TransportError::TooLarge
                } else {
                    TransportError::Io(e.to_string())
                }
            })?;
            Ok(Answer { status, content_type, body: body.to_bytes() })
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| TransportError::Timeout(self.timeout))?
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let u = BaseUrl::parse("http://127.0.0.1:8761/eureka").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:8761/eureka/");
        assert_eq!(u.join("apps/X").unwrap().to_string(), "http://127.0.0.1:8761/eureka/apps/X");
        assert_eq!(BaseUrl::parse("HTTP://h:1").unwrap().to_string(), "http://h:1/");
        assert!(BaseUrl::parse("https://h/eureka/").is_err());
        assert!(BaseUrl::parse("http:///eureka/").is_err());
        assert!(BaseUrl::parse("http://u:p@h/").is_err());
        assert!(BaseUrl::parse("http://h:99999999/").is_err());
        assert!(BaseUrl::parse("ftp://h/").is_err());
        assert!(BaseUrl::parse("http://[::1]/eureka/").is_ok());
        assert!(BaseUrl::parse("http://[::1]:8761/eureka/").is_ok());
    }

    #[test]
    fn encoding() {
        assert_eq!(path_segment("10.0.0.1:app:80"), "10.0.0.1:app:80");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(query([("status", "UP"), ("k", "a&b=c")]), "status=UP&k=a%26b%3Dc");
    }
}
