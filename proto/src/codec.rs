//! Length-prefixed framing: `u32` big-endian body length, then a MessagePack body.

use std::borrow::Cow;

use bytes::{Buf, BufMut, BytesMut};
use serde::Deserialize;

use crate::error::{DecodeError, EncodeError};
use crate::frame::*;

/// Size of the length prefix in bytes.
pub const LEN_PREFIX: usize = 4;

/// Appends one frame (length prefix and body) to `buf`.
pub fn encode(frame: &Frame, buf: &mut BytesMut) -> Result<(), EncodeError> {
    encode_value(frame, buf)
}

/// Appends one `deliver` frame from borrowed fields: the same bytes as [`encode`] of the
/// equal [`Frame::Deliver`].
pub fn encode_deliver(deliver: &DeliverRef<'_>, buf: &mut BytesMut) -> Result<(), EncodeError> {
    encode_value(deliver, buf)
}

fn encode_value<T: serde::Serialize + ?Sized>(value: &T, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.put_u32(0);
    let mut writer = buf.writer();
    let res = rmp_serde::encode::write_named(&mut writer, value);
    let buf = writer.into_inner();
    if let Err(e) = res {
        buf.truncate(start);
        return Err(e.into());
    }
    let len = buf.len() - start - LEN_PREFIX;
    let Ok(len32) = u32::try_from(len) else {
        buf.truncate(start);
        return Err(EncodeError::FrameTooLarge { len, max: u32::MAX as usize });
    };
    buf[start..start + LEN_PREFIX].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Encodes only the MessagePack body of a frame (no length prefix).
pub fn encode_body(frame: &Frame) -> Result<Vec<u8>, EncodeError> {
    Ok(rmp_serde::to_vec_named(frame)?)
}

/// What a frame body decoded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A frame this version knows.
    Frame(Frame),
    /// A well-formed frame with a `type` this version does not know. Peers skip it.
    Unknown {
        /// The unknown `type` value.
        frame_type: String,
    },
}

/// Incremental frame decoder with a maximum body size.
///
/// Feed it the bytes read from the stream (appended to a `BytesMut`) and call
/// [`Decoder::decode`] until it returns `Ok(None)`. The announced length is checked against the
/// maximum before anything is allocated for the body.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: u32,
}

impl Decoder {
    /// A decoder that refuses frame bodies longer than `max_frame` bytes.
    pub fn new(max_frame: u32) -> Self {
        Decoder { max_frame }
    }

    /// The configured maximum body size.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// How many more bytes `buf` needs before the next frame can be decoded (0 if one is
    /// complete), or the error the length prefix already shows.
    pub fn needed(&self, buf: &[u8]) -> Result<usize, DecodeError> {
        if buf.len() < LEN_PREFIX {
            return Ok(LEN_PREFIX - buf.len());
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len > self.max_frame {
            return Err(DecodeError::FrameTooLarge { len, max: self.max_frame });
        }
        Ok((LEN_PREFIX + len as usize).saturating_sub(buf.len()))
    }

    /// Takes one complete frame off the front of `buf`, if there is one.
    ///
    /// Returns `Ok(None)` when more bytes are needed. On error the stream can no longer be
    /// framed reliably and the connection should be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        if self.needed(buf)? > 0 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        buf.advance(LEN_PREFIX);
        let body = buf.split_to(len);
        decode_body(&body).map(Some)
    }
}

#[derive(Deserialize)]
struct TypeField<'a> {
    #[serde(rename = "type", borrow)]
    frame_type: Cow<'a, str>,
}

fn body_as<'a, T: Deserialize<'a>>(frame_type: &str, body: &'a [u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(body)
        .map_err(|e| DecodeError::Malformed { frame_type: frame_type.to_owned(), reason: e.to_string() })
}

/// Decodes one frame body (without its length prefix).
pub fn decode_body(body: &[u8]) -> Result<Decoded, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::EmptyFrame);
    }
    let tag: TypeField<'_> = rmp_serde::from_slice(body).map_err(|e| DecodeError::MissingType(e.to_string()))?;
    let t = tag.frame_type.as_ref();
    let frame = match t {
        "login" => Frame::Login(body_as(t, body)?),
        "send" => Frame::Send(body_as(t, body)?),
        "ack" => Frame::Ack(body_as(t, body)?),
        "sync" => Frame::Sync(body_as(t, body)?),
        "ping" => Frame::Ping(body_as(t, body)?),
        "logout" => Frame::Logout(body_as(t, body)?),
        "join_room" => Frame::JoinRoom(body_as(t, body)?),
        "leave_room" => Frame::LeaveRoom(body_as(t, body)?),
        "subscribe_presence" => Frame::SubscribePresence(body_as(t, body)?),
        "unsubscribe_presence" => Frame::UnsubscribePresence(body_as(t, body)?),
        "login_ok" => Frame::LoginOk(body_as(t, body)?),
        "login_error" => Frame::LoginError(body_as(t, body)?),
        "send_ack" => Frame::SendAck(body_as(t, body)?),
        "send_error" => Frame::SendError(body_as(t, body)?),
        "deliver" => Frame::Deliver(body_as(t, body)?),
        "kicked" => Frame::Kicked(body_as(t, body)?),
        "pong" => Frame::Pong(body_as(t, body)?),
        "error" => Frame::Error(body_as(t, body)?),
        "room_joined" => Frame::RoomJoined(body_as(t, body)?),
        "room_left" => Frame::RoomLeft(body_as(t, body)?),
        "room_event" => Frame::RoomEvent(body_as(t, body)?),
        "presence" => Frame::Presence(body_as(t, body)?),
        "history_truncated" => Frame::HistoryTruncated(body_as(t, body)?),
        "go_away" => Frame::GoAway(body_as(t, body)?),
        other => return Ok(Decoded::Unknown { frame_type: other.to_owned() }),
    };
    Ok(Decoded::Frame(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf).unwrap();
        let mut d = Decoder::new(1 << 20);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Decoded::Frame(frame)));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_vector_roundtrips() {
        for v in crate::vectors::all() {
            roundtrip(v.frame);
        }
    }

    #[test]
    fn a_borrowed_deliver_encodes_to_the_same_bytes_as_the_frame() {
        let mut delivers: Vec<Deliver> = crate::vectors::all()
            .into_iter()
            .filter_map(|v| match v.frame {
                Frame::Deliver(d) => Some(d),
                _ => None,
            })
            .collect();
        assert!(!delivers.is_empty(), "the vectors have a deliver frame");
        delivers.push(Deliver {
            msg_id: u64::MAX,
            seq: 0,
            from: String::new(),
            from_device: "é-device".into(),
            client_msg_id: "c".repeat(300),
            to: Address::room("lobby"),
            ts: 1 << 40,
            content_type: "application/octet-stream".into(),
            payload: (0..=255u8).cycle().take(70_000).collect(),
        });
        for d in delivers {
            let (mut framed, mut borrowed) = (BytesMut::new(), BytesMut::new());
            encode(&Frame::Deliver(d.clone()), &mut framed).unwrap();
            encode_deliver(&d.borrowed(), &mut borrowed).unwrap();
            assert_eq!(borrowed, framed, "{d:?}");
            let mut dec = Decoder::new(1 << 20);
            assert_eq!(dec.decode(&mut borrowed).unwrap(), Some(Decoded::Frame(Frame::Deliver(d))));
        }
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut full = BytesMut::new();
        encode(&Frame::Ping(Ping { nonce: 42 }), &mut full).unwrap();
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            assert_eq!(d.decode(&mut buf).unwrap(), None, "byte {i}");
            buf.put_u8(*b);
        }
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Decoded::Frame(Frame::Ping(Ping { nonce: 42 }))));
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0x00, 0x10, 0x00, 0x01][..]);
        let mut d = Decoder::new(1024);
        assert_eq!(d.decode(&mut buf), Err(DecodeError::FrameTooLarge { len: 0x0010_0001, max: 1024 }));
    }

    #[test]
    fn empty_and_garbage_bodies_are_typed_errors() {
        assert_eq!(decode_body(&[]), Err(DecodeError::EmptyFrame));
        assert!(matches!(decode_body(&[0xc1, 0xff, 0x00]), Err(DecodeError::MissingType(_))));
        // A map without "type".
        let body = rmp_serde::to_vec_named(&Ping { nonce: 1 }).unwrap();
        assert!(matches!(decode_body(&body), Err(DecodeError::MissingType(_))));
    }

    #[test]
    fn known_type_with_wrong_fields_is_malformed() {
        #[derive(serde::Serialize)]
        struct Bad {
            #[serde(rename = "type")]
            t: &'static str,
            nonce: &'static str,
        }
        let body = rmp_serde::to_vec_named(&Bad { t: "ping", nonce: "x" }).unwrap();
        assert!(matches!(
            decode_body(&body),
            Err(DecodeError::Malformed { frame_type, .. }) if frame_type == "ping"
        ));
    }

    #[test]
    fn unknown_type_and_unknown_fields_are_skipped() {
        #[derive(serde::Serialize)]
        struct Future {
            #[serde(rename = "type")]
            t: &'static str,
            nonce: u64,
            shiny_new_field: Vec<u32>,
        }
        let body = rmp_serde::to_vec_named(&Future { t: "ping", nonce: 9, shiny_new_field: vec![1, 2] }).unwrap();
        assert_eq!(decode_body(&body), Ok(Decoded::Frame(Frame::Ping(Ping { nonce: 9 }))));
        let body = rmp_serde::to_vec_named(&Future { t: "hologram", nonce: 9, shiny_new_field: vec![] }).unwrap();
        assert_eq!(decode_body(&body), Ok(Decoded::Unknown { frame_type: "hologram".into() }));
    }

    #[test]
    fn unknown_error_code_decodes_as_unknown() {
        #[derive(serde::Serialize)]
        struct Fut {
            #[serde(rename = "type")]
            t: &'static str,
            code: &'static str,
            message: &'static str,
            fatal: bool,
        }
        let body =
            rmp_serde::to_vec_named(&Fut { t: "error", code: "quantum_flux", message: "", fatal: false }).unwrap();
        match decode_body(&body) {
            Ok(Decoded::Frame(Frame::Error(e))) => assert_eq!(e.code, ErrorCode::Unknown),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_frames_in_one_buffer() {
        let mut buf = BytesMut::new();
        encode(&Frame::Ping(Ping { nonce: 1 }), &mut buf).unwrap();
        encode(&Frame::Ack(Ack { inbox: 5, rooms: None }), &mut buf).unwrap();
        let mut d = Decoder::new(1024);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Decoded::Frame(Frame::Ping(Ping { nonce: 1 }))));
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Decoded::Frame(Frame::Ack(Ack { inbox: 5, rooms: None }))));
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }
}
