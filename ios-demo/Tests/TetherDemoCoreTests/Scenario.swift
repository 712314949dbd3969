// The demo's scenario against a real node, the same as the android-demo's on the JVM: two
// stores (two users, as two phones would run them) sign in, chat 1:1 and in a room, and the
// screen state each one exposes is checked step by step: the conversation list (order, last
// message, unread counts back to 0 when opened), delivery states (pending -> acknowledged),
// room history paging, enter/quit lines and the online count, presence dots, the connection
// banner through pause/resume and through a restart of the node, a kick by a newer login, and a
// restart of the app from its display cache.
import Foundation
import TetherDemoCore
import TetherSDK

/// Runs the scenario; `step` is told each step that passed. Stops at the first failure.
func runScenario(node: TestNode, workDir: URL, step: (String) -> Void) async throws {
    // Unique names: an external node may have seen earlier runs.
    let run = String(UUID().uuidString.prefix(6)).lowercased()
    let aliceName = "alice-\(run)"
    let bobName = "bob-\(run)"
    let lobbyName = "lobby-\(run)"

    func store(_ user: String, device: String, secret: String, endpoint: String? = nil) throws -> ChatStore {
        // Through the sign-in form, as the app does it.
        let settings = try SignInForm.parse(endpoint: endpoint ?? node.quic, secret: secret, pinnedCertificatePath: node.certPath)
        try expect(settings.credentialKind, .ticket, "a ticket is recognised")
        let dir = workDir.appendingPathComponent(device)
        let options = ChatStore.Options(
            stateDir: dir.appendingPathComponent("sdk"),
            cache: FileDisplayCache(url: dir.appendingPathComponent("display-cache.json")),
            deviceId: device, timing: testTiming, metadata: ["app": "ios-demo-test"], historyPageSize: 2
        )
        return ChatStore(settings: settings, options: options)
    }

    // 1. Sign in: alice at the node's address, bob through the registry the node registers with.
    let aliceTicket = try await ticket(node, aliceName)
    let bobTicket = try await ticket(node, bobName)
    let registry = "http://\(node.admin)/eureka/"
    try expect(try SignInForm.parseEndpoint(registry), .registry(registry))
    let alice = Watched("alice", try store(aliceName, device: "alice-phone-\(run)", secret: aliceTicket))
    let bob = Watched("bob", try store(bobName, device: "bob-phone-\(run)", secret: bobTicket, endpoint: registry))
    try await alice.store.start()
    try await bob.store.start()
    try await alice.until("alice online, user known from the login") { $0.banner == .online && $0.me == aliceName }
    try await bob.until("bob online") { $0.banner == .online && $0.me == bobName }
    try expect(Format.banner(.online, nowMs: 0).title, "Online")
    step("sign in with tickets (alice at host:port, bob through the registry URL): banner online, the user learnt from the login")

    // 2. 1:1: alice writes to bob.
    let withBob = try await alice.store.startChat(with: bobName)
    let echo = try await alice.store.send("hi bob", to: withBob)
    try expect(echo.delivery, .pending, "the local echo right after send")
    var a = try await alice.until("the echo on alice's screen") { $0.outgoing(echo.clientMsgId) != nil }
    try expect(a.outgoing(echo.clientMsgId)?.delivery, .pending, "first shown as pending")
    try expect(ConversationList.rows(a).first?.lastDelivery, .pending)
    a = try await alice.until("hi bob acknowledged") { $0.outgoing(echo.clientMsgId)?.delivery == .acknowledged }
    try expect(ConversationList.rows(a).first?.preview, "You: hi bob")
    try expect(ConversationList.rows(a).first?.lastDelivery, .acknowledged)
    try expect(Format.delivery(.acknowledged), "Sent")
    step("1:1 send: pending -> acknowledged on the sender's screen")

    let withAlice = ConversationID.user(aliceName)
    var b = try await bob.until("hi bob in bob's list, unread") { ConversationList.rows($0).first?.preview == "hi bob" }
    try expect(ConversationList.rows(b).map { $0.id }, [withAlice])
    try expect(ConversationList.rows(b)[0].unread, 1)
    try expect(b.totalUnread, 1)
    b = try await bob.until("alice's presence dot: online") { $0.presence[aliceName] == .online }
    try expect(ConversationList.rows(b)[0].presence, .online)
    await bob.store.open(withAlice)
    b = await bob.store.current
    try expect(ConversationList.rows(b)[0].unread, 0, "opened: read")
    step("1:1 receive: conversation in the list with last message and unread 1, presence online; opened -> 0")

    // Bob answers while alice has the chat open: not unread for her.
    try await bob.store.send("hi alice", to: withAlice)
    a = try await alice.until("hi alice on alice's screen") { texts($0, withBob).last == "hi alice" }
    try expect(a.conversations[withBob]?.unread, 0, "the open conversation stays read")
    try expect(texts(a, withBob), ["hi bob", "hi alice"])
    // Alice goes back to the list; bob writes again.
    await alice.store.closeConversation()
    await bob.store.closeConversation()
    let there = try await bob.store.send("are you there?", to: withAlice)
    a = try await alice.until("unread 1 for bob") { $0.conversations[withBob]?.unread == 1 }
    try expect(ConversationList.rows(a)[0].preview, "are you there?")
    b = try await bob.until("bob's own message acknowledged") { $0.outgoing(there.clientMsgId)?.delivery == .acknowledged }
    try expect(ConversationList.rows(b)[0].preview, "You: are you there?")
    try expect(ConversationList.rows(b)[0].lastDelivery, .acknowledged)
    step("1:1 both ways: read while open, unread 1 with the last message once back in the list")

    // 3. A room: alice creates it and talks before bob comes.
    let lobby = ConversationID.room(lobbyName)
    let joined = try await alice.store.joinRoom(lobbyName)
    try expect(joined.head, 0)
    a = try await alice.until("alice in the room, 1 online") {
        $0.conversations[lobby]?.room?.online == 1 && texts($0, lobby).contains("You joined")
    }
    var sent: [ChatMessage] = []
    for text in ["r1", "r2", "r3"] {
        let message = try await alice.store.send(text, to: lobby)
        sent.append(message)
    }
    a = try await alice.until("r1..r3 acknowledged") { model in
        sent.allSatisfy { model.outgoing($0.clientMsgId)?.delivery == .acknowledged }
    }
    try expect(sent.map { a.outgoing($0.clientMsgId)?.seq ?? 0 }, [1, 2, 3], "room seqs from the acks")
    try expect(ConversationList.rows(a).map { $0.id }, [lobby, withBob], "the room has the latest message")
    try expect(ConversationList.rows(a)[0].preview, "You: r3")
    try expect(ConversationList.rows(a)[0].roomCounts, "1 member, 1 online")
    step("room created: enter line, online 1, three messages acknowledged with room seqs 1..3, list order")

    // Bob joins: enter lines and the online count on both screens.
    let bobJoined = try await bob.store.joinRoom(lobbyName)
    try expect(bobJoined.head, 3)
    b = try await bob.until("bob in the room, 2 online") {
        $0.conversations[lobby]?.room?.online == 2 && texts($0, lobby) == ["You joined"]
    }
    try expect(b.conversations[lobby]?.unread, 0)
    a = try await alice.until("bob joined, 2 online on alice's screen") {
        texts($0, lobby).last == "\(bobName) joined" && $0.conversations[lobby]?.room?.online == 2
    }
    try expect(ConversationList.rows(a)[0].roomCounts, "2 members, 2 online")
    try expect(a.conversations[lobby]?.unread, 0, "lines are not unread")
    step("second member: enter line and online 2 on both screens")

    // Bob pages back through what was said before he joined (pages of 2).
    try check(b.canLoadOlder(room: lobbyName), "older messages to load")
    var more = try await bob.store.loadOlder(room: lobbyName)
    try check(more, "a first page")
    b = try await bob.until("page 1: r2 r3") { texts($0, lobby) == ["r2", "r3", "You joined"] }
    more = try await bob.store.loadOlder(room: lobbyName)
    try check(more, "a second page")
    b = try await bob.until("page 2: r1") { texts($0, lobby) == ["r1", "r2", "r3", "You joined"] }
    try expect(b.conversations[lobby]?.unread, 0, "history is not unread")
    try check(!b.canLoadOlder(room: lobbyName), "nothing older than r1")
    more = try await bob.store.loadOlder(room: lobbyName)
    try check(!more, "no third page")
    step("room history paging: two pages of older messages above the enter line, not unread")

    // Bob talks in the room; alice (in the list) gets unread 1 and the room moves up.
    let hello = try await bob.store.send("hello room", to: lobby)
    try expect(hello.delivery, .pending)
    try await bob.until("hello room acknowledged") { $0.outgoing(hello.clientMsgId)?.delivery == .acknowledged }
    a = try await alice.until("unread 1 in the room") { $0.conversations[lobby]?.unread == 1 }
    try expect(ConversationList.rows(a)[0].id, lobby)
    try expect(ConversationList.rows(a)[0].preview, "\(bobName): hello room")
    await alice.store.open(lobby)
    a = await alice.store.current
    try expect(a.conversations[lobby]?.unread, 0)
    try expect(a.totalUnread, 1, "bob's 1:1 message is still unread")
    await alice.store.open(withBob)
    a = await alice.store.current
    try expect(a.totalUnread, 0)
    await alice.store.closeConversation()
    step("room message: pending -> acknowledged, unread 1 and last message on the other screen, 0 when opened")

    // Bob leaves: a quit line and online 1 for alice.
    try await bob.store.leaveRoom(lobbyName)
    a = try await alice.until("bob left, 1 online") {
        texts($0, lobby).last == "\(bobName) left" && $0.conversations[lobby]?.room?.online == 1
    }
    try expect(ConversationList.rows(a).first(where: { $0.id == lobby })?.roomCounts, "1 member, 1 online")
    b = await bob.store.current
    try expect(b.conversations[lobby]?.room?.left, true)
    try expect(texts(b, lobby).last, "You left")
    step("leaving: quit line and online 1 on the other screen, 'You left' on one's own")

    // 4. Presence and the lifecycle: bob's app goes to the background and comes back.
    await bob.store.phaseChanged(.inactive)
    await bob.store.phaseChanged(.background)
    b = try await bob.until("bob paused") { $0.banner == .paused }
    try expect(Format.banner(b.banner, nowMs: 0).title, "Paused")
    a = try await alice.until("bob's presence dot: offline") {
        if case .offline = $0.presence[bobName] ?? .unknown { return true }
        return false
    }
    let whilePaused = try await alice.store.send("while you were away", to: withBob)
    try await alice.until("acknowledged while bob is paused") { $0.outgoing(whilePaused.clientMsgId)?.delivery == .acknowledged }
    await bob.store.phaseChanged(.active)
    b = try await bob.until("bob back online with the message") {
        $0.banner == .online && texts($0, withAlice).last == "while you were away"
    }
    try expect(b.conversations[withAlice]?.unread, 1, "what came while paused is unread")
    try await alice.until("bob's presence dot: online again") { $0.presence[bobName] == .online }
    step("scene phase background -> paused banner, presence offline; active -> online, what came meanwhile delivered")

    // A network change (Wi-Fi to cellular): the connection moves, the conversation goes on.
    await alice.store.pathUpdated(NetworkPath(usable: true, interfaces: ["wifi"]))
    await alice.store.pathUpdated(NetworkPath(usable: true, interfaces: ["cellular"], expensive: true))
    let moved = try await alice.store.send("after the network change", to: withBob)
    try await alice.until("acknowledged after the move") { $0.outgoing(moved.clientMsgId)?.delivery == .acknowledged }
    b = try await bob.until("bob got it") { texts($0, withAlice).last == "after the network change" }
    try expect(texts(b, withAlice).filter { $0 == "while you were away" }.count, 1, "nothing twice")
    a = await alice.store.current
    try expect(a.banner, .online, "still online after the move")
    try expect(b.conversations[withAlice]?.unread, 2)
    step("network change (NWPathMonitor path Wi-Fi -> cellular): networkChanged(), still online, nothing lost or doubled")

    // 5. The node restarts: both banners go offline (backing off, with the next retry), a
    // message written meanwhile stays pending, then everything is back.
    if node.canRestart {
        node.stop()
        a = try await alice.until("alice backing off", timeout: 30) { $0.banner.isBackingOff }
        b = try await bob.until("bob backing off", timeout: 30) { $0.banner.isBackingOff }
        let text = Format.banner(a.banner, nowMs: UInt64(Date().timeIntervalSince1970 * 1000))
        try expect(text.title, "Offline")
        try check(text.detail?.hasPrefix("Retrying") == true, "the banner tells the next retry: \(text.detail ?? "-")")
        let offline = try await alice.store.send("sent while the node was down", to: withBob)
        a = await alice.store.current
        try expect(a.outgoing(offline.clientMsgId)?.delivery, .pending, "pending while offline")
        try node.start()
        a = try await alice.until("alice back online", timeout: 60) { $0.banner == .online }
        b = try await bob.until("bob back online", timeout: 60) { $0.banner == .online }
        a = try await alice.until("the offline message acknowledged") { $0.outgoing(offline.clientMsgId)?.delivery == .acknowledged }
        b = try await bob.until("bob got it") { texts($0, withAlice).last == "sent while the node was down" }
        try expect(b.conversations[withAlice]?.unread, 3)
        step("node restart: banners online -> offline (retrying) -> online; the message sent meanwhile pending -> acknowledged")
    } else {
        step("node restart: left out (the node was started elsewhere)")
    }

    // 6. Alice signs in on another phone: this one is kicked.
    let secondTicket = try await ticket(node, aliceName)
    let alice2 = Watched("alice2", try store(aliceName, device: "alice-phone2-\(run)", secret: secondTicket))
    try await alice2.store.start()
    try await alice2.until("the second phone online") { $0.banner == .online }
    a = try await alice.until("alice kicked") { $0.banner == .kicked(.replaced) }
    try expect(Format.banner(a.banner, nowMs: 0).title, "Signed in on another device")
    try check(a.banner.needsSignIn, "a kicked account needs a new sign-in")
    await alice2.store.stop()
    await alice.store.stop()
    step("a second login of the same user and device type: banner kicked (replaced)")

    // 7. Bob's app restarts: the display cache shows the list at once, the SDK logs in again
    // with its resume token (the ticket is used up) and the conversation goes on.
    await bob.store.stop()
    let bobAgain = Watched("bob-restarted", try store(bobName, device: "bob-phone-\(run)", secret: bobTicket, endpoint: registry))
    b = await bobAgain.store.current
    try expect(b.me, bobName)
    try check(ConversationList.rows(b).contains { $0.id == withAlice && $0.preview == (node.canRestart ? "sent while the node was down" : "after the network change") },
              "the cached list before any connection: \(describe(b))")
    try await bobAgain.store.start()
    try await bobAgain.until("bob online again from the resume token") { $0.banner == .online }
    await bobAgain.store.stop()
    step("app restart: the list from the display cache at once, then online again (resume token)")
}

extension Banner {
    var isBackingOff: Bool {
        if case .backingOff = self { return true }
        return false
    }
}
