// The Swift side of the bindings test (bindings/scripts/kotlin-test runs it where a Swift
// toolchain exists): the generated Swift plus the AsyncStream adapter against a real
// tether-server process, the same scenario as bindings/kotlin/test/TetherTest.kt.
// Usage: tether-swift-test <tether-server binary>
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(CryptoKit)
import CryptoKit
#endif

let adminToken = "swift-test-admin"
let jwtSecret = "swift-test-secret"

struct TestFailure: Error, CustomStringConvertible {
    let description: String
}

func check(_ cond: Bool, _ what: @autoclosure () -> String) throws {
    if !cond { throw TestFailure(description: what()) }
}

/// A tether-server process on free loopback ports, restartable on the same data and port.
final class Node: @unchecked Sendable {
    let bin: String
    let dir: URL
    var quic = "127.0.0.1:0"
    var admin = ""
    var process: Process?

    init(bin: String) throws {
        self.bin = bin
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = [
            "--data-dir", dir.path, "--quic-addr", quic, "--admin-addr", "127.0.0.1:0",
            "--jwt-secret", jwtSecret, "--admin-token", adminToken, "--log", "warn",
        ]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        // The first line names the bound addresses: "... quic=ADDR admin=ADDR ...".
        var line = Data()
        while true {
            let byte = out.fileHandleForReading.readData(ofLength: 1)
            if byte.isEmpty || byte == Data([0x0a]) { break }
            line.append(byte)
        }
        let text = String(decoding: line, as: UTF8.self)
        func field(_ name: String) -> String? {
            text.split(separator: " ").first { $0.hasPrefix("\(name)=") }.map { String($0.dropFirst(name.count + 1)) }
        }
        guard let q = field("quic"), let a = field("admin") else {
            throw TestFailure(description: "server did not start: \(text)")
        }
        quic = q
        admin = a
        process = p
    }

    func kill() {
        process?.terminate()
        process?.waitUntilExit()
        process = nil
    }

    var cert: String { dir.appendingPathComponent("dev-cert.pem").path }

    /// A one-time login ticket from the admin API.
    func ticket(_ user: String) async throws -> String {
        var req = URLRequest(url: URL(string: "http://\(admin)/v1/tickets")!)
        req.httpMethod = "POST"
        req.setValue("Bearer \(adminToken)", forHTTPHeaderField: "Authorization")
        req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        req.httpBody = try JSONSerialization.data(withJSONObject: ["user": user])
        let (data, _) = try await URLSession.shared.data(for: req)
        let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        guard let ticket = obj?["ticket"] as? String else { throw TestFailure(description: "no ticket in \(obj ?? [:])") }
        return ticket
    }
}

#if canImport(CryptoKit)
/// An HS256 JWT for `user`, valid for `ttl` seconds (negative: already expired).
func jwt(_ user: String, ttl: Int = 3600) -> String {
    func b64(_ d: Data) -> String {
        d.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
    let exp = Int(Date().timeIntervalSince1970) + ttl
    let header = b64(Data(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
    let claims = b64(Data(#"{"sub":"\#(user)","exp":\#(exp)}"#.utf8))
    let mac = HMAC<SHA256>.authenticationCode(for: Data("\(header).\(claims)".utf8), using: SymmetricKey(data: Data(jwtSecret.utf8)))
    return "\(header).\(claims).\(b64(Data(mac)))"
}
#endif

func config(_ node: Node, _ device: String, stateDir: String? = nil) -> ClientConfig {
    ClientConfig(
        server: node.quic, serverName: "localhost", trust: .pinned(path: node.cert),
        deviceType: String(device.split(separator: "-").last ?? "phone"), deviceId: device, stateDir: stateDir,
        metadata: ["app": "swift-test"],
        timing: Timing(heartbeatIntervalMs: 500, heartbeatTimeoutMs: 1000, backoffBaseMs: 100, backoffMaxMs: 1000, ackTimeoutMs: 3000)
    )
}

/// A started client and the iterator of its event stream.
final class Peer: @unchecked Sendable {
    let client: TetherClient
    var events: AsyncStream<Event>.AsyncIterator

    init(client: TetherClient) {
        self.client = client
        events = client.events().makeAsyncIterator()
    }

    /// The next message event's text (other events skipped).
    func nextText() async throws -> String {
        while let event = await events.next() {
            if case let .message(message) = event { return String(decoding: message.payload, as: UTF8.self) }
        }
        throw TestFailure(description: "event stream ended")
    }
}

func peer(_ cfg: ClientConfig, _ credential: @escaping @Sendable () -> Credential?) async throws -> Peer {
    let client = try await startClient(config: cfg, credentials: ClosureCredentialProvider(credential))
    let p = Peer(client: client)
    try await client.waitOnline()
    return p
}

/// Fails the body when it does not end within `seconds`.
func within<T: Sendable>(_ seconds: Double, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            throw TestFailure(description: "timed out after \(seconds) s")
        }
        let first = try await group.next()!
        group.cancelAll()
        return first
    }
}

var passed = 0
var failed = 0

func test(_ name: String, _ body: @escaping @Sendable () async throws -> Void) async {
    do {
        try await within(120) { try await body() }
        passed += 1
        print("ok   \(name)")
    } catch {
        failed += 1
        print("FAIL \(name): \(error)")
    }
}

let args = CommandLine.arguments
guard args.count > 1 else { fatalError("usage: tether-swift-test <tether-server binary>") }
let node = try Node(bin: args[1])
try node.start()

await test("login with a ticket; 1:1 through the AsyncStream") {
    let bobTicket = try await node.ticket("sbob1")
    let aliceTicket = try await node.ticket("salice1")
    let bob = try await peer(config(node, "sbob1-phone")) { .ticket(ticket: bobTicket) }
    let alice = try await peer(config(node, "salice1-phone")) { .ticket(ticket: aliceTicket) }
    let ack = try await alice.client.sendText(toUser: "sbob1", text: "hello bob").ack()
    try check(!ack.duplicate, "a fresh message")
    try check(try await bob.nextText() == "hello bob", "bob got it")
    await alice.client.stop()
    await bob.client.stop()
}

#if canImport(CryptoKit)
await test("login with a JWT from the token callback; an expired one is refreshed") {
    final class Counter: @unchecked Sendable { var n = 0 }
    let calls = Counter()
    let carol = try await peer(config(node, "scarol-phone")) {
        calls.n += 1
        return .token(jwt: jwt("scarol", ttl: calls.n == 1 ? -3600 : 3600))
    }
    try check(calls.n >= 2, "the provider was asked again: \(calls.n)")
    await carol.client.stop()
}
#else
print("swift: no CryptoKit here: the JWT test runs on Apple platforms only")
#endif

await test("a room: join, send, receive") {
    let (t1, t2) = (try await node.ticket("salice3"), try await node.ticket("sbob3"))
    let alice = try await peer(config(node, "salice3-tablet")) { .ticket(ticket: t1) }
    let bob = try await peer(config(node, "sbob3-tablet")) { .ticket(ticket: t2) }
    _ = try await alice.client.joinRoom(room: "swift-room")
    let joined = try await bob.client.joinRoom(room: "swift-room")
    try check(joined.room == "swift-room", "joined \(joined)")
    _ = try await alice.client.send(to: .room(id: "swift-room"), contentType: "text/plain", payload: Data("hi room".utf8)).ack()
    try check(try await bob.nextText() == "hi room", "the room message")
    await alice.client.stop()
    await bob.client.stop()
}

await test("a typed error surfaces as a Swift error with its detail") {
    let t = try await node.ticket("salice4")
    let alice = try await peer(config(node, "salice4-desktop")) { .ticket(ticket: t) }
    do {
        _ = try await alice.client.joinRoom(room: "")
        throw TestFailure(description: "an empty room id was accepted")
    } catch let TetherError.Refused(code, detail) {
        try check(code == .invalidField, "code \(code) (\(detail))")
    }
    await alice.client.stop()
    do {
        _ = try await alice.client.outbox()
        throw TestFailure(description: "a closed client answered")
    } catch TetherError.Closed {
    }
}

await test("pause, messages meanwhile, resume: each exactly once") {
    let (t1, t2) = (try await node.ticket("salice5"), try await node.ticket("sbob5"))
    let alice = try await peer(config(node, "salice5-watch")) { .ticket(ticket: t1) }
    let bob = try await peer(config(node, "sbob5-watch")) { .ticket(ticket: t2) }
    try bob.client.pause()
    while bob.client.state() != .paused { try await Task.sleep(nanoseconds: 20_000_000) }
    for i in 0..<3 { _ = try await alice.client.sendText(toUser: "sbob5", text: "paused \(i)").ack() }
    try bob.client.resume()
    for i in 0..<3 { try check(try await bob.nextText() == "paused \(i)", "message \(i) after resume") }
    _ = try await alice.client.sendText(toUser: "sbob5", text: "marker").ack()
    try check(try await bob.nextText() == "marker", "nothing delivered twice before the marker")
    await alice.client.stop()
    await bob.client.stop()
}

await test("1,000 sends without awaiting arrive in call order; network change mid-conversation") {
    let (t1, t2) = (try await node.ticket("salice6"), try await node.ticket("sbob6"))
    let alice = try await peer(config(node, "salice6-laptop")) { .ticket(ticket: t1) }
    let bob = try await peer(config(node, "sbob6-laptop")) { .ticket(ticket: t2) }
    let handles = (0..<1000).map { alice.client.sendText(toUser: "sbob6", text: "n\($0)") }
    try await alice.client.networkChanged()
    for i in 0..<1000 { try check(try await bob.nextText() == "n\(i)", "message \(i) in order") }
    for h in handles { _ = try await h.ack() }
    await alice.client.stop()
    await bob.client.stop()
}

node.kill()
print("swift: \(passed) passed, \(failed) failed")
exit(failed == 0 ? 0 : 1)
