// Checks of the non-UI logic with synthetic SDK events (no node): the sign-in form, the
// banner, the event -> screen state mapping, unread counting, rooms and history paging, the
// conversation list, formatting, the lifecycle and network signals, the display cache. Run by
// the XCTest target and by the runner of ios-demo/scripts/core-test.
import Foundation
import TetherDemoCore
import TetherSDK

struct LogicCheck {
    let name: String
    let run: () throws -> Void
}

/// A text message as the SDK hands it over.
func textMessage(_ from: String, to: Target, seq: UInt64, id: UInt64, _ text: String, ts: UInt64 = 1_000) -> Message {
    Message(
        msgId: id, seq: seq, from: from, fromDevice: "\(from)-phone", clientMsgId: "c\(id)", to: to, ts: ts,
        contentType: "text/plain", payload: Data(text.utf8)
    )
}

func base64url(_ text: String) -> String {
    Data(text.utf8).base64EncodedString()
        .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
}

func logicChecks() -> [LogicCheck] {
    [
        LogicCheck(name: "sign-in form: node address or registry URL, ticket or token") {
            try expect(SignInForm.parseEndpoint("127.0.0.1:7443"), .server("127.0.0.1:7443"))
            try expect(SignInForm.parseEndpoint(" chat.example.com "), .server("chat.example.com:7443"))
            try expect(SignInForm.parseEndpoint("[::1]:9000"), .server("[::1]:9000"))
            try expect(SignInForm.parseEndpoint("::1"), .server("[::1]:7443"))
            try expect(SignInForm.parseEndpoint("http://10.0.0.5:7080"), .registry("http://10.0.0.5:7080/eureka/"))
            try expect(SignInForm.parseEndpoint("https://reg.example.com/eureka"), .registry("https://reg.example.com/eureka/"))
            try expectError(SignInError.badPort("0")) { _ = try SignInForm.parseEndpoint("host:0") }
            try expectError(SignInError.badPort("http")) { _ = try SignInForm.parseEndpoint("host:http") }
            try expectError(SignInError.emptyEndpoint) { _ = try SignInForm.parseEndpoint("  ") }
            try expectError(SignInError.badEndpoint("ftp://host")) { _ = try SignInForm.parseEndpoint("ftp://host") }
            try expectError(SignInError.emptySecret) { _ = try SignInForm.parse(endpoint: "host", secret: " ") }

            let jwt = base64url(#"{"alg":"HS256","typ":"JWT"}"#) + "." + base64url(#"{"sub":"alice","exp":1}"#) + ".c2ln"
            try expect(CredentialKind.guess("tk_0123456789abcdefghijklmnopqrstuv"), .ticket)
            try expect(CredentialKind.guess(jwt), .token)
            try expect(JWT.subject(jwt), "alice")
            try expect(JWT.subject("tk_x"), nil)

            let viaRegistry = try SignInForm.parse(endpoint: "http://10.0.0.5:7080/eureka/", secret: jwt, pinnedCertificatePath: " /tmp/dev-cert.pem ")
            try expect(viaRegistry.credentialKind, .token)
            try expect(viaRegistry.knownUser, "alice")
            try expect(viaRegistry.credential, .token(jwt: jwt))
            let config = viaRegistry.clientConfig(stateDir: "/tmp/state", metadata: ["app": "x"])
            try expect(config.server, "")
            try expect(config.registryUrls, ["http://10.0.0.5:7080/eureka/"])
            try expect(config.trust, .pinned(path: "/tmp/dev-cert.pem"))
            try expect(config.stateDir, "/tmp/state")

            let direct = try SignInForm.parse(endpoint: "127.0.0.1", secret: "tk_abc")
            try expect(direct.credential, .ticket(ticket: "tk_abc"))
            try expect(direct.knownUser, nil)
            let directConfig = direct.clientConfig(stateDir: "/tmp/s")
            try expect(directConfig.server, "127.0.0.1:7443")
            try expect(directConfig.registryUrls, [])
            try expect(directConfig.trust, .platform)
        },

        LogicCheck(name: "banner: every connection state, the backoff countdown") {
            try expect(Banner(.idle, nowMs: 0), .connecting)
            try expect(Banner(.connecting, nowMs: 0), .connecting)
            try expect(Banner(.loggingIn, nowMs: 0), .connecting)
            try expect(Banner(.online, nowMs: 0), .online)
            try expect(Banner(.paused, nowMs: 0), .paused)
            try expect(Banner(.loggedOut, nowMs: 0), .signedOut)
            try expect(Banner(.kicked(reason: .replaced), nowMs: 0), .kicked(.replaced))
            try expect(Banner(.authFailed(code: .ticketInvalid), nowMs: 0), .refused(.ticketInvalid))
            let backoff = Banner(.backoff(attempt: 2, retryInMs: 3_000), nowMs: 10_000)
            try expect(backoff, .backingOff(attempt: 2, retryAtMs: 13_000))
            try check(backoff.isOffline && !backoff.isOnline && !backoff.needsSignIn, "backing off is offline")

            let text = Format.banner(backoff, nowMs: 10_500)
            try expect(text.title, "Offline")
            try expect(text.detail, "Retrying in 3 s (attempt 3)")
            try expect(text.tone, .warning)
            try expect(Format.banner(.backingOff(attempt: 0, retryAtMs: 100), nowMs: 200).detail, "Retrying now")
            try expect(Format.banner(.online, nowMs: 0).tone, .ok)
            try expect(Format.banner(.paused, nowMs: 0).title, "Paused")
            let kicked = Format.banner(.kicked(.replaced), nowMs: 0, kickMessage: nil)
            try expect(kicked.title, "Signed in on another device")
            try expect(kicked.tone, .error)
            try expect(Format.banner(.refused(.ticketInvalid), nowMs: 0).detail, "The ticket is unknown, used up or expired")
            try expect(Format.countdown(to: 200_000, nowMs: 0), "in 4 min")

            var model = ScreenModel()
            model.apply(.state(state: .backoff(attempt: 1, retryInMs: 500)), nowMs: 1_000)
            try expect(model.banner, .backingOff(attempt: 1, retryAtMs: 1_500))
            model.apply(.kicked(reason: .replaced, message: "replaced by a newer login"), nowMs: 2_000)
            try expect(model.banner, .kicked(.replaced))
            try expect(model.kickMessage, "replaced by a newer login")
            model.apply(.state(state: .online), nowMs: 3_000)
            try expect(model.kickMessage, nil)
        },

        LogicCheck(name: "1:1: unread until opened, pending -> acknowledged, a copy from another device, no duplicates") {
            var m = ScreenModel()
            m.apply(.loggedIn(user: "alice", sessionId: "s1"), nowMs: 1)
            try expect(m.me, "alice")
            let hi = textMessage("bob", to: .user(id: "alice"), seq: 1, id: 10, "hi", ts: 100)
            m.apply(.message(message: hi), nowMs: 2)
            m.apply(.message(message: hi), nowMs: 3)  // a duplicate (e.g. from the display cache) is dropped
            try expect(texts(m, .user("bob")), ["hi"])
            var row = ConversationList.rows(m)[0]
            try expect(row.id, .user("bob"))
            try expect(row.unread, 1)
            try expect(row.preview, "hi")
            try expect(row.presence, .unknown)
            try expect(m.totalUnread, 1)

            m.markOpened(.user("bob"), nowMs: 4)
            try expect(m.conversations[.user("bob")]?.unread, 0)
            m.apply(.message(message: textMessage("bob", to: .user(id: "alice"), seq: 2, id: 11, "still there?", ts: 110)), nowMs: 5)
            try expect(m.conversations[.user("bob")]?.unread, 0, "read while open")
            m.closeConversation()

            let echo = m.addOutgoing(clientMsgId: "c-out", to: .user("bob"), text: "yes", nowMs: 120)
            try expect(echo.delivery, .pending)
            row = ConversationList.rows(m)[0]
            try expect(row.preview, "You: yes")
            try expect(row.lastDelivery, .pending)
            m.apply(.sendAcked(ack: SendAck(clientMsgId: "c-out", msgId: 12, seq: 3, ts: 121, duplicate: false)), nowMs: 121)
            try expect(m.outgoing("c-out")?.delivery, .acknowledged)
            try expect(m.outgoing("c-out")?.msgId, 12)
            try expect(ConversationList.rows(m)[0].lastDelivery, .acknowledged)
            try expect(Format.delivery(.pending), "Sending…")
            try expect(Format.delivery(.acknowledged), "Sent")

            // Sent by alice on her tablet: shown in the conversation with bob, as hers, not unread.
            m.apply(.message(message: textMessage("alice", to: .user(id: "bob"), seq: 4, id: 13, "from my tablet", ts: 130)), nowMs: 130)
            try expect(texts(m, .user("bob")).last, "from my tablet")
            try expect(m.lines(.user("bob")).last?.delivery, .acknowledged)
            try expect(m.conversations[.user("bob")]?.unread, 0)
            try expect(ConversationList.rows(m)[0].preview, "You: from my tablet")

            // The sender copy of this device's own message (after a restart) acknowledges it.
            m.addOutgoing(clientMsgId: "c-again", to: .user("bob"), text: "again", nowMs: 140)
            var copy = textMessage("alice", to: .user(id: "bob"), seq: 5, id: 14, "again", ts: 141)
            copy.clientMsgId = "c-again"
            m.apply(.message(message: copy), nowMs: 141)
            try expect(texts(m, .user("bob")).filter { $0 == "again" }.count, 1)
            try expect(m.outgoing("c-again")?.delivery, .acknowledged)

            m.addOutgoing(clientMsgId: "c-bad", to: .user("bob"), text: "x", nowMs: 150)
            m.apply(.sendFailed(clientMsgId: "c-bad", code: .invalidField, message: "too long"), nowMs: 151)
            try expect(m.outgoing("c-bad")?.delivery, .failed("too long"))
            try expect(m.alert, "Not sent: too long")
            m.addOutgoing(clientMsgId: "c-cancel", to: .user("bob"), text: "oops", nowMs: 160)
            m.apply(.sendCancelled(clientMsgId: "c-cancel", maybeDelivered: false), nowMs: 161)
            try expect(m.outgoing("c-cancel"), nil)

            m.apply(.presence(presence: Presence(user: "bob", online: true, devices: [], lastSeenMs: 0)), nowMs: 170)
            try expect(ConversationList.rows(m)[0].presence, .online)
            m.apply(.presence(presence: Presence(user: "bob", online: false, devices: [], lastSeenMs: 5_000)), nowMs: 171)
            try expect(ConversationList.rows(m)[0].presence, .offline(lastSeenMs: 5_000))
            try expect(m.userPeers, ["bob"])
        },

        LogicCheck(name: "rooms: enter and quit lines, online count, history above without unread, paging") {
            var m = ScreenModel(me: "bob")
            let lobby = ConversationID.room("lobby")
            // The enter event may come before the join's answer: the head still counts.
            m.apply(.roomEvent(event: RoomEvent(room: "lobby", kind: .enter, user: "bob", members: 2, online: 2)), nowMs: 1)
            m.apply(.roomJoined(joined: RoomJoined(room: "lobby", head: 5, members: 2, online: 2)), nowMs: 2)
            try expect(texts(m, lobby), ["You joined"])
            try expect(m.conversations[lobby]?.room?.headAtJoin, 5)
            try expect(m.conversations[lobby]?.room?.online, 2)
            try expect(m.conversations[lobby]?.unread, 0, "a notice is not unread")
            try expect(ConversationList.rows(m)[0].preview, "No messages yet")

            try check(m.canLoadOlder(room: "lobby"), "history before the join can be loaded")
            try expect(m.requestOlder(room: "lobby", pageSize: 2), 3)  // seqs 4 and 5
            let to = Target.room(id: "lobby")
            for seq in UInt64(4)...5 {
                m.apply(.message(message: textMessage("alice", to: to, seq: seq, id: 100 + seq, "m\(seq)", ts: seq)), nowMs: 3)
            }
            try expect(texts(m, lobby), ["m4", "m5", "You joined"])
            try expect(m.requestOlder(room: "lobby", pageSize: 2), 1)  // 2 and 3, and the SDK repeats 4 and 5
            for seq in UInt64(2)...5 {
                m.apply(.message(message: textMessage("alice", to: to, seq: seq, id: 100 + seq, "m\(seq)", ts: seq)), nowMs: 4)
            }
            try expect(m.requestOlder(room: "lobby", pageSize: 2), 0)
            for seq in UInt64(1)...5 {
                m.apply(.message(message: textMessage("alice", to: to, seq: seq, id: 100 + seq, "m\(seq)", ts: seq)), nowMs: 5)
            }
            try expect(texts(m, lobby), ["m1", "m2", "m3", "m4", "m5", "You joined"])
            try expect(m.conversations[lobby]?.unread, 0, "history is not unread")
            try check(!m.canLoadOlder(room: "lobby"), "nothing older than seq 1")
            try expect(m.requestOlder(room: "lobby", pageSize: 2), nil)

            m.apply(.message(message: textMessage("alice", to: to, seq: 6, id: 106, "live", ts: 600)), nowMs: 600)
            try expect(texts(m, lobby).last, "live")
            try expect(m.conversations[lobby]?.unread, 1)
            m.addOutgoing(clientMsgId: "c-room", to: lobby, text: "mine", nowMs: 700)
            try expect(ConversationList.rows(m)[0].preview, "You: mine")
            m.apply(.sendAcked(ack: SendAck(clientMsgId: "c-room", msgId: 107, seq: 7, ts: 701, duplicate: false)), nowMs: 701)
            try expect(m.outgoing("c-room")?.seq, 7)
            try expect(m.conversations[lobby]?.room?.highestSeq, 7)
            m.apply(.message(message: textMessage("carol", to: to, seq: 8, id: 108, "hey all", ts: 800)), nowMs: 800)
            try expect(m.conversations[lobby]?.unread, 2)
            try expect(ConversationList.rows(m)[0].preview, "carol: hey all")

            m.apply(.roomEvent(event: RoomEvent(room: "lobby", kind: .enter, user: "carol", members: 3, online: 3)), nowMs: 801)
            m.apply(.roomEvent(event: RoomEvent(room: "lobby", kind: .quit, user: "carol", members: 2, online: 2)), nowMs: 802)
            m.apply(.roomEvent(event: RoomEvent(room: "lobby", kind: .offline, user: "alice", members: 2, online: 1)), nowMs: 803)
            try expect(Array(texts(m, lobby).suffix(2)), ["carol joined", "carol left"])
            try expect(m.conversations[lobby]?.unread, 2, "lines are not unread")
            try expect(ConversationList.rows(m)[0].roomCounts, "2 members, 1 online")
            m.markOpened(lobby, nowMs: 900)
            try expect(m.conversations[lobby]?.unread, 0)

            m.apply(.roomLeft(room: "lobby"), nowMs: 901)
            m.apply(.roomEvent(event: RoomEvent(room: "lobby", kind: .quit, user: "bob", members: 1, online: 1)), nowMs: 902)
            try expect(texts(m, lobby).last, "You left")
            try expect(texts(m, lobby).filter { $0 == "You left" }.count, 1)
            try expect(m.conversations[lobby]?.room?.left, true)
            try expect(Format.roomCounts(m.conversations[lobby]!.room!), "You left this room")
            try check(!m.canLoadOlder(room: "lobby"), "no history fetch after leaving")

            // Part of the history is past retention.
            var o = ScreenModel(me: "bob")
            let old = ConversationID.room("old")
            o.apply(.roomJoined(joined: RoomJoined(room: "old", head: 100, members: 1, online: 1)), nowMs: 1)
            try expect(o.requestOlder(room: "old", pageSize: 30), 70)
            o.apply(.historyTruncated(room: "old", after: 70, firstSeq: 90), nowMs: 2)
            for seq in UInt64(90)...100 {
                o.apply(.message(message: textMessage("alice", to: .room(id: "old"), seq: seq, id: seq, "o\(seq)", ts: seq)), nowMs: 3)
            }
            try expect(texts(o, old).first, "Older messages are no longer available")
            try expect(texts(o, old)[1], "o90")
            try expect(texts(o, old).last, "o100")
            try expect(o.conversations[old]?.unread, 0)
            try check(!o.canLoadOlder(room: "old"), "nothing older than the first seq kept")
        },

        LogicCheck(name: "conversation list: most recent first, stable ties, previews") {
            var m = ScreenModel(me: "alice")
            m.ensureConversation(.user("zed"), nowMs: 100)
            m.ensureConversation(.user("amy"), nowMs: 100)
            m.apply(.message(message: textMessage("bob", to: .user(id: "alice"), seq: 1, id: 1, "old news", ts: 50)), nowMs: 60)
            m.apply(.message(message: textMessage("carol", to: .room(id: "lobby"), seq: 1, id: 2, "fresh", ts: 200)), nowMs: 210)
            try expect(ConversationList.rows(m).map { $0.id }, [.room("lobby"), .user("amy"), .user("zed"), .user("bob")])
            try expect(ConversationList.rows(m)[0].title, "#lobby")
            try expect(ConversationList.rows(m)[0].preview, "carol: fresh")
            try expect(ConversationList.rows(m)[1].preview, "Say hello")
            m.apply(.message(message: textMessage("bob", to: .user(id: "alice"), seq: 2, id: 3, "line one\nline two", ts: 300)), nowMs: 300)
            try expect(ConversationList.rows(m)[0].id, .user("bob"))
            try expect(ConversationList.rows(m)[0].preview, "line one line two")
            try expect(ConversationList.rows(m)[0].unread, 2)
            let long = String(repeating: "x", count: 100)
            m.apply(.message(message: textMessage("bob", to: .user(id: "alice"), seq: 3, id: 4, long, ts: 400)), nowMs: 400)
            try expect(ConversationList.rows(m)[0].preview.count, 80)
            try check(ConversationList.rows(m)[0].preview.hasSuffix("…"), "a long preview is cut")
            try expect(m.totalUnread, 4)
        },

        LogicCheck(name: "formatting: times, delivery, presence, payloads") {
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = TimeZone(identifier: "UTC")!
            let locale = Locale(identifier: "en_GB")
            let now = Date(timeIntervalSince1970: 1_700_000_000)  // Tuesday 14 November 2023, 22:13 UTC
            let ms = { (secondsAgo: Double) -> UInt64 in UInt64((now.timeIntervalSince1970 - secondsAgo) * 1000) }
            try expect(Format.listTime(ms(3_600), now: now, calendar: calendar, locale: locale), "21:13")
            try expect(Format.listTime(ms(86_400), now: now, calendar: calendar, locale: locale), "Yesterday")
            try expect(Format.listTime(ms(3 * 86_400), now: now, calendar: calendar, locale: locale), "Saturday")
            let date = Format.listTime(ms(30 * 86_400), now: now, calendar: calendar, locale: locale)
            try check(date.contains("Oct") && date.contains("2023") && date.contains("15"), "a date a month ago: \(date)")
            try expect(Format.messageTime(ms(60), calendar: calendar, locale: locale), "22:12")
            try expect(Format.presence(.online, now: now), "online")
            try expect(Format.presence(.offline(lastSeenMs: nil), now: now), "offline")
            try expect(Format.presence(.offline(lastSeenMs: ms(86_400)), now: now, calendar: calendar, locale: locale), "last seen Yesterday")
            try expect(Format.presence(.unknown, now: now), "")
            try expect(Format.delivery(.failed("rate limited")), "Not sent: rate limited")
            try expect(Format.delivery(.received), "")
            try expect(Format.roomCounts(RoomInfo(members: 1, online: 1)), "1 member, 1 online")
            try expect(Format.payloadText(contentType: "image/png", payload: Data([1, 2, 3])), "[image/png, 3 bytes]")
            try expect(Format.payloadText(contentType: "text/plain; charset=utf-8", payload: Data("hé".utf8)), "hé")
            try expect(Format.byteCount(1536), "1.5 KB")
        },

        LogicCheck(name: "lifecycle: background pauses once, active resumes; only real network changes count") {
            var gate = LifecycleGate()
            try expect(gate.phaseChanged(to: .active), nil)
            try expect(gate.phaseChanged(to: .inactive), nil)
            try expect(gate.phaseChanged(to: .background), .pause)
            try expect(gate.phaseChanged(to: .background), nil)
            try expect(gate.phaseChanged(to: .inactive), nil)
            try expect(gate.phaseChanged(to: .active), .resume)
            try expect(gate.phaseChanged(to: .active), nil)

            var network = NetworkChangeDetector()
            let wifi = NetworkPath(usable: true, interfaces: ["wifi"])
            let cellular = NetworkPath(usable: true, interfaces: ["cellular"], expensive: true)
            try expect(network.pathUpdated(wifi), false, "the first report is the current path")
            try expect(network.pathUpdated(wifi), false, "the same path again")
            try expect(network.pathUpdated(cellular), true, "Wi-Fi to cellular")
            try expect(network.pathUpdated(NetworkPath(usable: false, interfaces: [])), false, "lost: nothing to move to")
            try expect(network.pathUpdated(wifi), true, "back on Wi-Fi")
        },

        LogicCheck(name: "display cache: a restart shows the list at once; the outbox decides what is pending") {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ios-demo-cache-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: dir) }
            let cache = FileDisplayCache(url: dir.appendingPathComponent("cache.json"))
            try expect(cache.load(), nil)

            var m = ScreenModel(me: "alice")
            m.apply(.message(message: textMessage("bob", to: .user(id: "alice"), seq: 1, id: 1, "hi", ts: 10)), nowMs: 10)
            m.apply(.roomJoined(joined: RoomJoined(room: "lobby", head: 3, members: 2, online: 2)), nowMs: 11)
            m.addOutgoing(clientMsgId: "c1", to: .user("bob"), text: "one", nowMs: 12)
            m.addOutgoing(clientMsgId: "c2", to: .user("bob"), text: "two", nowMs: 13)
            for i in 0..<150 {
                m.addOutgoing(clientMsgId: "bulk\(i)", to: .room("lobby"), text: "b\(i)", nowMs: 20 + UInt64(i))
                m.apply(.sendAcked(ack: SendAck(clientMsgId: "bulk\(i)", msgId: 1_000 + UInt64(i), seq: 4 + UInt64(i), ts: 20 + UInt64(i), duplicate: false)), nowMs: 20)
            }
            try cache.save(m.cacheSnapshot())

            guard let loaded = cache.load() else { throw TestFailure(description: "the cache did not load") }
            var restored = ScreenModel(cached: loaded)
            try expect(restored.me, "alice")
            try expect(ConversationList.rows(restored), ConversationList.rows(m))
            try expect(restored.lines(.room("lobby")).count, ScreenModel.cachedLinesPerConversation)
            try expect(restored.conversations[.room("lobby")]?.room?.headAtJoin, 3)

            restored.restoreOutbox([
                PendingMessage(clientMsgId: "c2", to: .user(id: "bob"), contentType: "text/plain", payload: Data("two".utf8), createdMs: 13),
                PendingMessage(clientMsgId: "c3", to: .room(id: "news"), contentType: "text/plain", payload: Data("three".utf8), createdMs: 14),
            ], nowMs: 30)
            try expect(restored.outgoing("c1")?.delivery, .acknowledged, "acknowledged while the app was away")
            try expect(restored.outgoing("c2")?.delivery, .pending)
            try expect(restored.outgoing("c3")?.delivery, .pending)
            try expect(texts(restored, .room("news")), ["three"])
            cache.delete()
            try expect(cache.load(), nil)
        },

        LogicCheck(name: "account files: settings kept across launches, a pasted certificate, sign out forgets") {
            let files = AccountFiles(root: FileManager.default.temporaryDirectory.appendingPathComponent("ios-demo-account-\(UUID().uuidString)"))
            defer { try? FileManager.default.removeItem(at: files.root) }
            try expect(files.loadSettings(), nil)
            try expect(try files.pinnedCertificate(from: "  "), nil)
            let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
            let pinned = try files.pinnedCertificate(from: pem)
            try expect(pinned, files.certificateURL.path)
            try expect(try String(contentsOf: files.certificateURL, encoding: .utf8), pem + "\n")
            try expect(try files.pinnedCertificate(from: files.certificateURL.path), files.certificateURL.path)
            try expectError(AccountFilesError.noSuchCertificate("/nonexistent/dev-cert.pem")) {
                _ = try files.pinnedCertificate(from: "/nonexistent/dev-cert.pem")
            }
            let settings = try SignInForm.parse(endpoint: "127.0.0.1:7443", secret: "tk_abc", pinnedCertificatePath: pinned)
            try files.saveSettings(settings)
            try expect(files.loadSettings(), settings)
            try expect(files.storeOptions().stateDir, files.stateDir)
            try FileManager.default.createDirectory(at: files.stateDir, withIntermediateDirectories: true)
            files.forget()
            try expect(files.loadSettings(), nil)
            try check(!FileManager.default.fileExists(atPath: files.stateDir.path), "the SDK state is gone")
            try check(!FileManager.default.fileExists(atPath: files.certificateURL.path), "the certificate is gone")
        },
    ]
}
