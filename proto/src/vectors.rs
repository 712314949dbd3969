//! Test vectors: real frames and the exact bytes (length prefix included) they encode to.
//!
//! `docs/protocol.md` quotes these; a test keeps both in agreement. A client in another language
//! can check its codec against them.

use crate::frame::*;

/// One test vector.
#[derive(Debug, Clone)]
pub struct Vector {
    /// Short name used in docs/protocol.md.
    pub name: &'static str,
    /// The frame.
    pub frame: Frame,
    /// Lower-case hex of the encoded frame, length prefix included.
    pub hex: &'static str,
}

/// Every test vector.
pub fn all() -> Vec<Vector> {
    vec![
        Vector {
            name: "login_token",
            frame: Frame::Login(Login {
                version: 1,
                credential: Credential::Token("eyJ.x.y".into()),
                device_type: "phone".into(),
                device_id: "d1".into(),
                inbox_cursor: Some(41),
                client: Some("tether-sdk/0.1".into()),
                room_cursors: None,
                metadata: None,
            }),
            hex: "0000007287a474797065a56c6f67696ea776657273696f6e01aa63726564656e7469616c81a5746f6b656ea765794a2e782e79ab6465766963655f74797065a570686f6e65a96465766963655f6964a26431ac696e626f785f637572736f7229a6636c69656e74ae7465746865722d73646b2f302e31",
        },
        Vector {
            name: "login_ticket",
            frame: Frame::Login(Login {
                version: 1,
                credential: Credential::Ticket("tk_abc".into()),
                device_type: "desktop".into(),
                device_id: "d2".into(),
                inbox_cursor: None,
                client: None,
                room_cursors: None,
                metadata: None,
            }),
            hex: "0000006687a474797065a56c6f67696ea776657273696f6e01aa63726564656e7469616c81a67469636b6574a6746b5f616263ab6465766963655f74797065a76465736b746f70a96465766963655f6964a26432ac696e626f785f637572736f72c0a6636c69656e74c0",
        },
        Vector {
            name: "login_resume",
            frame: Frame::Login(Login {
                version: 1,
                credential: Credential::Resume("r.t.k".into()),
                device_type: "phone".into(),
                device_id: "d1".into(),
                inbox_cursor: Some(42),
                client: None,
                room_cursors: None,
                metadata: None,
            }),
            hex: "0000006387a474797065a56c6f67696ea776657273696f6e01aa63726564656e7469616c81a6726573756d65a5722e742e6bab6465766963655f74797065a570686f6e65a96465766963655f6964a26431ac696e626f785f637572736f722aa6636c69656e74c0",
        },
        Vector {
            name: "send",
            frame: Frame::Send(Send {
                client_msg_id: "c1".into(),
                to: Address::user("bob"),
                content_type: "text/plain".into(),
                payload: b"hi".to_vec(),
            }),
            hex: "0000005585a474797065a473656e64ad636c69656e745f6d73675f6964a26331a2746f82a46b696e64a475736572a26964a3626f62ac636f6e74656e745f74797065aa746578742f706c61696ea77061796c6f6164c4026869",
        },
        Vector { name: "ack", frame: Frame::Ack(Ack { inbox: 300, rooms: None }), hex: "0000001382a474797065a361636ba5696e626f78cd012c" },
        Vector { name: "sync", frame: Frame::Sync(Sync { after: 7, until: None, room: None }), hex: "0000001983a474797065a473796e63a5616674657207a5756e74696cc0" },
        Vector { name: "ping", frame: Frame::Ping(Ping { nonce: 1 }), hex: "0000001282a474797065a470696e67a56e6f6e636501" },
        Vector { name: "logout", frame: Frame::Logout(Logout {}), hex: "0000000d81a474797065a66c6f676f7574" },
        Vector {
            name: "login_ok",
            frame: Frame::LoginOk(LoginOk {
                version: 1,
                session_id: "s1".into(),
                user: "alice".into(),
                inbox_head: 42,
                server_time_ms: 1_700_000_000_000,
                idle_timeout_ms: 90_000,
                max_frame: 65536,
                resume_token: Some("r.t.k".into()),
                resume_expires_ms: Some(1_700_086_400_000),
                room_heads: Some([("r1".to_string(), 9)].into_iter().collect()),
            }),
            hex: "000000b78ba474797065a86c6f67696e5f6f6ba776657273696f6e01aa73657373696f6e5f6964a27331a475736572a5616c696365aa696e626f785f686561642aae7365727665725f74696d655f6d73cf0000018bcfe56800af69646c655f74696d656f75745f6d73ce00015f90a96d61785f6672616d65ce00010000ac726573756d655f746f6b656ea5722e742e6bb1726573756d655f657870697265735f6d73cf0000018bd50bc400aa726f6f6d5f686561647381a2723109",
        },
        Vector {
            name: "login_error",
            frame: Frame::LoginError(LoginError { code: ErrorCode::TokenExpired, message: "expired".into() }),
            hex: "0000003583a474797065ab6c6f67696e5f6572726f72a4636f6465ad746f6b656e5f65787069726564a76d657373616765a765787069726564",
        },
        Vector {
            name: "send_ack",
            frame: Frame::SendAck(SendAck {
                client_msg_id: "c1".into(),
                msg_id: 9_000_000_001,
                seq: 12,
                ts: 1_700_000_000_123,
                duplicate: false,
            }),
            hex: "0000004c86a474797065a873656e645f61636bad636c69656e745f6d73675f6964a26331a66d73675f6964cf0000000218711a01a37365710ca27473cf0000018bcfe5687ba96475706c6963617465c2",
        },
        Vector {
            name: "send_error",
            frame: Frame::SendError(SendError {
                client_msg_id: "c2".into(),
                code: ErrorCode::InvalidField,
                message: "empty recipient".into(),
            }),
            hex: "0000004d84a474797065aa73656e645f6572726f72ad636c69656e745f6d73675f6964a26332a4636f6465ad696e76616c69645f6669656c64a76d657373616765af656d70747920726563697069656e74",
        },
        Vector {
            name: "deliver",
            frame: Frame::Deliver(Deliver {
                msg_id: 9_000_000_001,
                seq: 5,
                from: "alice".into(),
                from_device: "d1".into(),
                client_msg_id: "c1".into(),
                to: Address::user("bob"),
                ts: 1_700_000_000_123,
                content_type: "text/plain".into(),
                payload: b"hi".to_vec(),
            }),
            hex: "000000938aa474797065a764656c69766572a66d73675f6964cf0000000218711a01a373657105a466726f6da5616c696365ab66726f6d5f646576696365a26431ad636c69656e745f6d73675f6964a26331a2746f82a46b696e64a475736572a26964a3626f62a27473cf0000018bcfe5687bac636f6e74656e745f74797065aa746578742f706c61696ea77061796c6f6164c4026869",
        },
        Vector {
            name: "kicked",
            frame: Frame::Kicked(Kicked { reason: KickReason::Replaced, message: "new login".into() }),
            hex: "0000002f83a474797065a66b69636b6564a6726561736f6ea87265706c61636564a76d657373616765a96e6577206c6f67696e",
        },
        Vector { name: "pong", frame: Frame::Pong(Pong { nonce: 1 }), hex: "0000001282a474797065a4706f6e67a56e6f6e636501" },
        Vector {
            name: "error",
            frame: Frame::Error(ErrorFrame {
                code: ErrorCode::UnknownFrameType,
                message: "skipped".into(),
                fatal: false,
            }),
            hex: "0000003b84a474797065a56572726f72a4636f6465b2756e6b6e6f776e5f6672616d655f74797065a76d657373616765a7736b6970706564a5666174616cc2",
        },
        Vector {
            name: "login_rooms_metadata",
            frame: Frame::Login(Login {
                version: 1,
                credential: Credential::Token("eyJ.x.y".into()),
                device_type: "phone".into(),
                device_id: "d1".into(),
                inbox_cursor: Some(41),
                client: None,
                room_cursors: Some([("r1".to_string(), 9u64)].into_iter().collect()),
                metadata: Some([("app".to_string(), "1.2".to_string())].into_iter().collect()),
            }),
            hex: "0000008889a474797065a56c6f67696ea776657273696f6e01aa63726564656e7469616c81a5746f6b656ea765794a2e782e79ab6465766963655f74797065a570686f6e65a96465766963655f6964a26431ac696e626f785f637572736f7229a6636c69656e74c0ac726f6f6d5f637572736f727381a2723109a86d6574616461746181a3617070a3312e32",
        },
        Vector {
            name: "send_room",
            frame: Frame::Send(Send {
                client_msg_id: "c3".into(),
                to: Address::room("r1"),
                content_type: "text/plain".into(),
                payload: b"hey".to_vec(),
            }),
            hex: "0000005585a474797065a473656e64ad636c69656e745f6d73675f6964a26333a2746f82a46b696e64a4726f6f6da26964a27231ac636f6e74656e745f74797065aa746578742f706c61696ea77061796c6f6164c403686579",
        },
        Vector {
            name: "ack_rooms",
            frame: Frame::Ack(Ack { inbox: 300, rooms: Some([("r1".to_string(), 12u64)].into_iter().collect()) }),
            hex: "0000001e83a474797065a361636ba5696e626f78cd012ca5726f6f6d7381a272310c",
        },
        Vector { name: "sync_room", frame: Frame::Sync(Sync { after: 3, until: Some(9), room: Some("r1".into()) }), hex: "0000002184a474797065a473796e63a5616674657203a5756e74696c09a4726f6f6da27231" },
        Vector { name: "join_room", frame: Frame::JoinRoom(JoinRoom { room: "r1".into() }), hex: "0000001882a474797065a96a6f696e5f726f6f6da4726f6f6da27231" },
        Vector { name: "leave_room", frame: Frame::LeaveRoom(LeaveRoom { room: "r1".into() }), hex: "0000001982a474797065aa6c656176655f726f6f6da4726f6f6da27231" },
        Vector {
            name: "subscribe_presence",
            frame: Frame::SubscribePresence(SubscribePresence { users: vec!["bob".into()] }),
            hex: "0000002482a474797065b27375627363726962655f70726573656e6365a5757365727391a3626f62",
        },
        Vector {
            name: "unsubscribe_presence",
            frame: Frame::UnsubscribePresence(UnsubscribePresence { users: vec!["bob".into()] }),
            hex: "0000002682a474797065b4756e7375627363726962655f70726573656e6365a5757365727391a3626f62",
        },
        Vector {
            name: "room_joined",
            frame: Frame::RoomJoined(RoomJoined { room: "r1".into(), head: 12, members: 3, online: 2 }),
            hex: "0000003185a474797065ab726f6f6d5f6a6f696e6564a4726f6f6da27231a4686561640ca76d656d6265727303a66f6e6c696e6502",
        },
        Vector { name: "room_left", frame: Frame::RoomLeft(RoomLeft { room: "r1".into() }), hex: "0000001882a474797065a9726f6f6d5f6c656674a4726f6f6da27231" },
        Vector {
            name: "room_event",
            frame: Frame::RoomEvent(RoomEvent {
                room: "r1".into(),
                kind: RoomEventKind::Offline,
                user: "bob".into(),
                members: 3,
                online: 1,
            }),
            hex: "0000004086a474797065aa726f6f6d5f6576656e74a4726f6f6da27231a46b696e64a76f66666c696e65a475736572a3626f62a76d656d6265727303a66f6e6c696e6501",
        },
        Vector {
            name: "presence",
            frame: Frame::Presence(Presence {
                user: "bob".into(),
                online: true,
                devices: vec![DevicePresence {
                    device_type: "phone".into(),
                    device_id: "b1".into(),
                    since_ms: 1_700_000_000_000,
                    node: "n0".into(),
                    metadata: [("app".to_string(), "1.2".to_string())].into_iter().collect(),
                }],
                last_seen_ms: 1_700_000_000_500,
            }),
            hex: "0000008b85a474797065a870726573656e6365a475736572a3626f62a66f6e6c696e65c3a7646576696365739185ab6465766963655f74797065a570686f6e65a96465766963655f6964a26231a873696e63655f6d73cf0000018bcfe56800a46e6f6465a26e30a86d6574616461746181a3617070a3312e32ac6c6173745f7365656e5f6d73cf0000018bcfe569f4",
        },
        Vector {
            name: "history_truncated",
            frame: Frame::HistoryTruncated(HistoryTruncated { room: "r1".into(), after: 0, first_seq: 500 }),
            hex: "0000003484a474797065b1686973746f72795f7472756e6361746564a4726f6f6da27231a5616674657200a966697273745f736571cd01f4",
        },
        Vector {
            name: "go_away",
            frame: Frame::GoAway(GoAway { reason: "draining".into(), message: "node draining".into() }),
            hex: "0000003483a474797065a7676f5f61776179a6726561736f6ea8647261696e696e67a76d657373616765ad6e6f646520647261696e696e67",
        },
        Vector {
            name: "deliver_room",
            frame: Frame::Deliver(Deliver {
                msg_id: 9_000_000_002,
                seq: 13,
                from: "alice".into(),
                from_device: "d1".into(),
                client_msg_id: "c3".into(),
                to: Address::room("r1"),
                ts: 1_700_000_000_200,
                content_type: "text/plain".into(),
                payload: b"hey".to_vec(),
            }),
            hex: "000000938aa474797065a764656c69766572a66d73675f6964cf0000000218711a02a37365710da466726f6da5616c696365ab66726f6d5f646576696365a26431ad636c69656e745f6d73675f6964a26333a2746f82a46b696e64a4726f6f6da26964a27231a27473cf0000018bcfe568c8ac636f6e74656e745f74797065aa746578742f706c61696ea77061796c6f6164c403686579",
        },
    ]
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    #[test]
    fn vectors_match_the_encoder() {
        let mut mismatched = Vec::new();
        for v in super::all() {
            let mut buf = BytesMut::new();
            crate::encode(&v.frame, &mut buf).unwrap();
            let got = hex::encode(&buf);
            if std::env::var_os("PRINT_VECTORS").is_some() {
                println!("{} {}", v.name, got);
            }
            if got != v.hex {
                mismatched.push(v.name);
            }
        }
        assert!(mismatched.is_empty(), "vectors differ from the encoder: {mismatched:?}");
    }

    #[test]
    fn vectors_decode_to_their_frame() {
        for v in super::all() {
            let bytes = hex::decode(v.hex).unwrap();
            let mut buf = BytesMut::from(&bytes[..]);
            let got = crate::Decoder::new(1 << 16).decode(&mut buf).unwrap();
            assert_eq!(got, Some(crate::Decoded::Frame(v.frame)), "vector {}", v.name);
        }
    }
}
