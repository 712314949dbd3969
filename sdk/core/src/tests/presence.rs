//! Presence subscriptions: a set kept by the session, sent again after every login.

use tether_proto::{DevicePresence, Presence, SubscribePresence, UnsubscribePresence};

use super::*;

fn presence(user: &str, online: bool) -> Presence {
    Presence {
        user: user.into(),
        online,
        devices: online
            .then(|| DevicePresence {
                device_type: "phone".into(),
                device_id: format!("{user}-phone"),
                since_ms: 1_700_000_000_000,
                node: "n1".into(),
                metadata: [("app".to_string(), "1.0".to_string())].into(),
            })
            .into_iter()
            .collect(),
        last_seen_ms: 1_700_000_000_000,
    }
}

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn subscribe(names: &[&str]) -> Frame {
    Frame::SubscribePresence(SubscribePresence { users: users(names) })
}

#[test]
fn subscriptions_are_sent_at_once_and_again_after_every_login() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    h.s.subscribe_presence(users(&["carol", "bob", "bob", ""]), h.now);
    h.drain();
    assert_eq!(h.take_tx(), [subscribe(&["bob", "carol"])], "deduplicated, empty ids dropped");
    // Subscribing again to someone already subscribed asks again (for the current state).
    h.s.subscribe_presence(users(&["bob", "dave"]), h.now);
    h.drain();
    assert_eq!(h.take_tx(), [subscribe(&["bob", "dave"])]);
    assert_eq!(h.s.presence_subscriptions(), users(&["bob", "carol", "dave"]));
    h.frame(Frame::Presence(presence("bob", true)));
    assert_eq!(h.take_events(), [Event::Presence(presence("bob", true).into())]);

    // The server forgets subscriptions with the connection: the session sends them again.
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    assert!(!h.tx.iter().any(|f| matches!(f, Frame::SubscribePresence(_))), "not before login_ok");
    h.frame(Frame::LoginOk(login_ok(0)));
    let subs: Vec<&Frame> = h.tx.iter().filter(|f| matches!(f, Frame::SubscribePresence(_))).collect();
    assert_eq!(subs, [&subscribe(&["bob", "carol", "dave"])]);

    // Unsubscribing sends only users that were subscribed; their late frames are dropped.
    h.clear();
    h.s.unsubscribe_presence(users(&["carol", "zed"]), h.now);
    h.drain();
    assert_eq!(h.take_tx(), [Frame::UnsubscribePresence(UnsubscribePresence { users: users(&["carol"]) })]);
    h.s.unsubscribe_presence(users(&["zed"]), h.now);
    h.drain();
    assert!(h.tx.is_empty());
    h.frame(Frame::Presence(presence("carol", false)));
    h.frame(Frame::Presence(presence("dave", false)));
    assert_eq!(h.take_events(), [Event::Presence(presence("dave", false).into())]);
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    h.frame(Frame::LoginOk(login_ok(0)));
    let subs: Vec<&Frame> = h.tx.iter().filter(|f| matches!(f, Frame::SubscribePresence(_))).collect();
    assert_eq!(subs, [&subscribe(&["bob", "dave"])]);
}

#[test]
fn subscriptions_made_offline_wait_for_login() {
    let mut h = H::new();
    h.s.subscribe_presence(users(&["bob"]), h.now);
    h.drain();
    h.start();
    h.connected();
    assert!(!h.tx.iter().any(|f| matches!(f, Frame::SubscribePresence(_))));
    h.frame(Frame::LoginOk(login_ok(0)));
    assert_eq!(h.tx.iter().filter(|f| matches!(f, Frame::SubscribePresence(_))).count(), 1);
    // Nothing subscribed: nothing sent.
    let mut h = H::new();
    h.online(0);
    assert!(!h.tx.iter().any(|f| matches!(f, Frame::SubscribePresence(_))));
}

#[test]
fn long_subscription_lists_are_split() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let many: Vec<String> = (0..600).map(|i| format!("user-{i:04}")).collect();
    h.s.subscribe_presence(many.clone(), h.now);
    h.drain();
    let sent: Vec<usize> =
        h.tx.iter()
            .map(|f| match f {
                Frame::SubscribePresence(s) => s.users.len(),
                other => panic!("{other:?}"),
            })
            .collect();
    assert_eq!(sent, [256, 256, 88]);
}
