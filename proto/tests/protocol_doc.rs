//! Keeps docs/protocol.md true to the crate: every test vector (name and exact hex), every
//! frame type (with a row in the overview table, a subsection, and every field the encoder
//! writes in its field table), every error code, every kick reason, every room event kind and
//! every close code must be documented.

use std::collections::BTreeMap;

use tether_proto::vectors;
use tether_proto::{CloseCode, ErrorCode, Frame, KickReason, RoomEventKind};

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
        NoSuchRoom,
        NotAMember,
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
            // Rooms.
            NoSuchRoom | NotAMember => {}
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

/// Number of `Frame` variants.
const FRAME_TYPES: usize = 24;

/// Position of a frame's variant in [`Frame`]. The match has no wildcard, so adding a frame
/// type breaks the build here until it is listed (and then a vector and the doc must cover it).
fn frame_index(f: &Frame) -> usize {
    match f {
        Frame::Login(_) => 0,
        Frame::Send(_) => 1,
        Frame::Ack(_) => 2,
        Frame::Sync(_) => 3,
        Frame::Ping(_) => 4,
        Frame::Logout(_) => 5,
        Frame::JoinRoom(_) => 6,
        Frame::LeaveRoom(_) => 7,
        Frame::SubscribePresence(_) => 8,
        Frame::UnsubscribePresence(_) => 9,
        Frame::LoginOk(_) => 10,
        Frame::LoginError(_) => 11,
        Frame::SendAck(_) => 12,
        Frame::SendError(_) => 13,
        Frame::Deliver(_) => 14,
        Frame::Kicked(_) => 15,
        Frame::Pong(_) => 16,
        Frame::Error(_) => 17,
        Frame::RoomJoined(_) => 18,
        Frame::RoomLeft(_) => 19,
        Frame::RoomEvent(_) => 20,
        Frame::Presence(_) => 21,
        Frame::HistoryTruncated(_) => 22,
        Frame::GoAway(_) => 23,
    }
}

/// The subsection of section 5 about frame type `t` (heading "### 5.N `t` (direction)").
fn frame_section<'a>(doc: &'a str, t: &str) -> &'a str {
    let frames = section(doc, "## 5. ");
    let heading =
        frames.lines().find(|l| l.starts_with("### 5.") && l.contains(&format!(" `{t}` ("))).unwrap_or_else(|| {
            panic!("docs/protocol.md section 5 has no heading for frame type `{t}`");
        });
    section(frames, heading)
}

/// The top-level keys the reference encoder writes for `frame`, `type` excluded.
fn encoded_fields(frame: &Frame) -> Vec<String> {
    let body = tether_proto::encode_body(frame).unwrap();
    let map: BTreeMap<String, serde::de::IgnoredAny> = rmp_serde::from_slice(&body).unwrap();
    map.into_keys().filter(|k| k != "type").collect()
}

#[test]
fn vectors_cover_every_frame_type() {
    let mut covered = [false; FRAME_TYPES];
    for v in vectors::all() {
        covered[frame_index(&v.frame)] = true;
    }
    let missing: Vec<usize> = (0..FRAME_TYPES).filter(|i| !covered[*i]).collect();
    assert!(missing.is_empty(), "no test vector for the frame variants at positions {missing:?}");
}

#[test]
fn every_frame_type_has_a_row_and_a_field_table_with_every_field() {
    let doc = doc();
    let overview = section(&doc, "## 5. ");
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for v in vectors::all() {
        let t = v.frame.type_name();
        if seen.insert(t) && !overview.lines().any(|l| l.starts_with(&format!("| `{t}` |"))) {
            problems.push(format!("`{t}`: no row in the frame table of section 5"));
        }
        let body = frame_section(&doc, t);
        let fields = encoded_fields(&v.frame);
        if fields.is_empty() {
            continue;
        }
        if !body.contains("| field | msgpack | required | meaning |") {
            problems.push(format!("`{t}`: no field table"));
            continue;
        }
        for f in fields {
            if !body.lines().any(|l| l.starts_with(&format!("| `{f}` |"))) {
                problems.push(format!("`{t}`: field `{f}` (vector `{}`) missing from its table", v.name));
            }
        }
    }
    assert!(problems.is_empty(), "docs/protocol.md section 5 is out of date:\n{}", problems.join("\n"));
    assert_eq!(seen.len(), FRAME_TYPES, "the vectors should cover every frame type");
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
    let kicked = frame_section(&doc, "kicked");
    for reason in [KickReason::Replaced, KickReason::Admin, KickReason::Unknown] {
        // No wildcard: a new reason must be listed here. `Unknown` is what a receiver maps an
        // unknown reason to; it is never sent.
        let sent = match reason {
            KickReason::Replaced | KickReason::Admin => true,
            KickReason::Unknown => false,
        };
        if !sent {
            continue;
        }
        let name = wire_name(&reason);
        assert!(kicked.contains(&format!("`\"{name}\"`")), "kick reason `{name}` is not documented under `kicked`");
    }
}

#[test]
fn every_room_event_kind_is_documented() {
    let doc = doc();
    let frame = frame_section(&doc, "room_event");
    let table = section(&doc, "### 7.8 ");
    let all = [
        RoomEventKind::Enter,
        RoomEventKind::Quit,
        RoomEventKind::Online,
        RoomEventKind::Offline,
        RoomEventKind::Unknown,
    ];
    let mut missing = Vec::new();
    for kind in all {
        // No wildcard: a new kind must be listed here.
        let sent = match kind {
            RoomEventKind::Enter | RoomEventKind::Quit | RoomEventKind::Online | RoomEventKind::Offline => true,
            RoomEventKind::Unknown => false,
        };
        if !sent {
            continue;
        }
        let name = wire_name(&kind);
        if !frame.contains(&format!("`\"{name}\"`")) {
            missing.push(format!("`{name}` under `room_event`"));
        }
        if !table.lines().any(|l| l.starts_with(&format!("| `{name}` |"))) {
            missing.push(format!("`{name}` in the table of 7.8"));
        }
    }
    assert!(missing.is_empty(), "room event kinds not documented: {missing:?}");
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
            | CloseCode::ServerShutdown
            | CloseCode::GoingAway => {}
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
