//! Keeps docs/protocol.md true to the crate: every test vector (name and exact hex), every
//! frame type, every error code, every kick reason and every close code must be documented.

use tether_proto::vectors;
use tether_proto::{CloseCode, ErrorCode, KickReason};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The text of the section whose heading line starts with `heading` (e.g. `"## 8. "`), up to
/// the next heading of the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = doc
        .lines()
        .scan(0usize, |pos, line| {
            let at = *pos;
            *pos += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| line.starts_with(heading))
        .map(|(at, _)| at)
        .unwrap_or_else(|| panic!("docs/protocol.md has no heading starting with {heading:?}"));
    let body = &doc[start..];
    let mut end = body.len();
    let mut offset = 0;
    for (i, line) in body.lines().enumerate() {
        if i > 0 {
            let hashes = line.chars().take_while(|c| *c == '#').count();
            if hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
                end = offset;
                break;
            }
        }
        offset += line.len() + 1;
    }
    &body[..end]
}

/// The wire name of a serde enum value (a msgpack string).
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    let bytes = rmp_serde::to_vec(v).unwrap();
    rmp_serde::from_slice(&bytes).unwrap()
}

/// Every error code. The match has no wildcard, so adding a variant breaks the build here until
/// it is listed (and then documented).
fn all_error_codes() -> Vec<ErrorCode> {
    use ErrorCode::*;
    let all = vec![
        UnsupportedVersion,
        InvalidToken,
        BadSignature,
        TokenExpired,
        TicketInvalid,
        TicketExpired,
        NotLoggedIn,
        AlreadyLoggedIn,
        BadFrame,
        FrameTooLarge,
        UnknownFrameType,
        UnexpectedFrame,
        InvalidField,
        Unsupported,
        RateLimited,
        Internal,
        Unavailable,
        Unknown,
    ];
    for c in &all {
        match c {
            UnsupportedVersion | InvalidToken | BadSignature | TokenExpired | TicketInvalid | TicketExpired
            | NotLoggedIn | AlreadyLoggedIn | BadFrame | FrameTooLarge | UnknownFrameType | UnexpectedFrame
            | InvalidField | Unsupported | RateLimited | Internal | Unavailable | Unknown => {}
        }
    }
    all
}

#[test]
fn every_vector_is_quoted_under_its_name() {
    let doc = doc();
    let vectors_section = section(&doc, "## 11. ");
    let mut missing = Vec::new();
    for v in vectors::all() {
        assert!(doc.contains(v.hex), "docs/protocol.md lacks the hex of vector `{}`", v.name);
        let heading = format!("#### `{}`", v.name);
        if !vectors_section.lines().any(|l| l == heading) {
            missing.push(format!("{}: no heading {heading:?} in section 11", v.name));
            continue;
        }
        // The hex must sit in that vector's own subsection, on a line of its own.
        if !section(vectors_section, &heading).lines().any(|l| l == v.hex) {
            missing.push(format!("{}: hex not on its own line under {heading:?}", v.name));
        }
    }
    assert!(missing.is_empty(), "docs/protocol.md is out of date:\n{}", missing.join("\n"));
}

#[test]
fn every_frame_type_has_a_field_table() {
    let doc = doc();
    let frames = section(&doc, "## 5. ");
    let mut seen = std::collections::BTreeSet::new();
    for v in vectors::all() {
        let t = v.frame.type_name();
        if !seen.insert(t) {
            continue;
        }
        let heading =
            frames.lines().find(|l| l.starts_with("### 5.") && l.contains(&format!("`{t}` ("))).unwrap_or_else(|| {
                panic!("docs/protocol.md section 5 has no heading for frame type `{t}`");
            });
        let body = section(frames, heading);
        assert!(
            t == "logout" || body.contains("| field | msgpack | required | meaning |"),
            "frame `{t}` has no field table"
        );
    }
    assert_eq!(seen.len(), 14, "the vectors should cover every frame type");
}

#[test]
fn every_error_code_is_documented() {
    let doc = doc();
    let table = section(&doc, "## 8. ");
    let mut missing = Vec::new();
    for code in all_error_codes() {
        let name = wire_name(&code);
        if !table.lines().any(|l| l.starts_with(&format!("| `{name}` |"))) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "error codes missing from the table in section 8: {missing:?}");
}

#[test]
fn every_kick_reason_is_documented() {
    let doc = doc();
    let kicked = section(&doc, "### 5.12 ");
    for reason in [KickReason::Replaced, KickReason::Admin] {
        let name = wire_name(&reason);
        assert!(kicked.contains(&format!("`\"{name}\"`")), "kick reason `{name}` is not documented in 5.12");
    }
}

#[test]
fn every_close_code_is_documented_with_its_number_and_reason() {
    let doc = doc();
    let table = section(&doc, "## 9. ");
    let mut missing = Vec::new();
    for code in CloseCode::ALL {
        // No wildcard: a new close code must be added to `ALL` and here.
        match code {
            CloseCode::Normal
            | CloseCode::ProtocolError
            | CloseCode::FrameTooLarge
            | CloseCode::LoginTimeout
            | CloseCode::AuthFailed
            | CloseCode::Replaced
            | CloseCode::IdleTimeout
            | CloseCode::Kicked
            | CloseCode::Superseded
            | CloseCode::ServerShutdown => {}
        }
        let row = format!("| {} | `{}` |", code.code(), code.reason());
        if !table.lines().any(|l| l.starts_with(&row)) {
            missing.push(row);
        }
    }
    assert!(missing.is_empty(), "close codes missing from the table in section 9: {missing:?}");
}

#[test]
fn documented_constants_match_the_crate() {
    let doc = doc();
    assert!(doc.contains(&format!("ALPN protocol id **`{}`**", std::str::from_utf8(tether_proto::ALPN).unwrap())));
    assert!(doc.contains(&format!("default **{}** bytes", tether_proto::DEFAULT_MAX_FRAME)));
    assert!(doc.contains(&format!("`MIN_PROTOCOL_VERSION = {}`", tether_proto::MIN_PROTOCOL_VERSION)));
    assert!(doc.contains(&format!("`PROTOCOL_VERSION = {}`", tether_proto::PROTOCOL_VERSION)));
}
