//! The admin API against its description: every route of the code is in docs/admin-api.yaml
//! (and the other way round), and every refusal, the framework's own included, has the
//! documented JSON shape. The full conformance run (schemathesis against a running node) is
//! scripts/check-admin-api, which the test command runs after this.

mod common;

use std::collections::BTreeSet;

use common::*;

/// (path, method) pairs of the routes in server/src/admin.rs.
fn code_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../src/admin.rs");
    let mut out = BTreeSet::new();
    for part in src.split(".route(\"").skip(1) {
        let Some((path, rest)) = part.split_once('"') else { continue };
        if path == "/v1/faults" {
            continue; // testing only (--fault-injection), documented in operations.md
        }
        let call = rest.split(")\n").next().unwrap_or(rest);
        for method in ["get", "post", "delete", "put", "patch"] {
            if call.contains(&format!("{method}(")) {
                out.insert((path.to_string(), method.to_string()));
            }
        }
    }
    out
}

/// (path, method) pairs of docs/admin-api.yaml.
fn spec_routes() -> BTreeSet<(String, String)> {
    let spec = include_str!("../../docs/admin-api.yaml");
    let mut out = BTreeSet::new();
    let mut path = None;
    let mut in_paths = false;
    for line in spec.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            path = Some(format!("/{p}"));
        } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ").and_then(|m| m.strip_suffix(':'))) {
            if !m.starts_with(' ') {
                out.insert((p.clone(), m.to_string()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_described_and_every_description_is_a_route() {
    let code = code_routes();
    let spec = spec_routes();
    assert!(code.len() >= 15, "routes found in the code: {code:?}");
    assert_eq!(code, spec, "docs/admin-api.yaml and server/src/admin.rs disagree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_rejections_have_the_documented_json_shape() {
    let server = Server::start(&[]);
    let shape = |status: u16, body: &serde_json::Value, code: &str| {
        assert_eq!(body["error"], code, "{status}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{status}: {body}");
    };
    // Not JSON at all.
    let (status, body) = server.admin("POST", "/v1/tickets", Some(serde_json::json!("x"))).await;
    assert_eq!(status, 422);
    shape(status, &body, "invalid_body");
    // A missing field.
    let (status, body) = server.admin("POST", "/v1/rooms", Some(serde_json::json!({}))).await;
    assert_eq!(status, 422);
    shape(status, &body, "invalid_body");
    // A query that does not parse.
    let (status, body) = server.admin("GET", "/v1/rooms/r/messages?after=-1", None).await;
    assert_eq!(status, 400);
    shape(status, &body, "bad_request");
    // An unknown route and a wrong method.
    let (status, body) = server.admin("GET", "/v1/nothing", None).await;
    assert_eq!(status, 404);
    shape(status, &body, "not_found");
    let (status, body) = server.admin("PUT", "/v1/tickets", None).await;
    assert_eq!(status, 405);
    shape(status, &body, "method_not_allowed");
    // Our own refusals keep their codes.
    let (status, body) = server.admin("POST", "/v1/tickets", Some(serde_json::json!({ "user": "" }))).await;
    assert_eq!(status, 400);
    shape(status, &body, "invalid_field");
    let (status, body) =
        admin_call(server.admin, "POST", "/v1/tickets", Some(serde_json::json!({ "user": "u" })), None).await;
    assert_eq!(status, 401);
    shape(status, &body, "unauthorized");
    let ttl = serde_json::json!({ "user": "u", "ttl_secs": 1u64 << 40 });
    let (status, body) = server.admin("POST", "/v1/tickets", Some(ttl)).await;
    assert_eq!(status, 400);
    shape(status, &body, "invalid_field");
}
