// Test support shared by the XCTest target and the plain runner of ios-demo/scripts/core-test:
// checks, a tether-server node (a real process on free loopback ports, restartable on the same
// data and port), tickets from its admin API, and a watcher that sees every screen model a
// store publishes, in order.
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import TetherDemoCore
import TetherSDK

struct TestFailure: Error, CustomStringConvertible {
    let description: String
}

func check(_ condition: Bool, _ what: @autoclosure () -> String, line: UInt = #line) throws {
    if !condition { throw TestFailure(description: "\(what()) (line \(line))") }
}

func expect<T: Equatable>(_ actual: T, _ expected: T, _ what: String = "", line: UInt = #line) throws {
    if actual != expected {
        throw TestFailure(description: "\(what.isEmpty ? "" : what + ": ")expected \(expected), got \(actual) (line \(line))")
    }
}

func expectError<E: Error & Equatable>(_ expected: E, line: UInt = #line, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as E {
        try expect(error, expected, "error", line: line)
        return
    }
    throw TestFailure(description: "expected the error \(expected), got none (line \(line))")
}

/// A node the scenario talks to.
protocol TestNode: AnyObject {
    /// QUIC address, `host:port`.
    var quic: String { get }
    /// Admin API address, `host:port`.
    var admin: String { get }
    var adminToken: String { get }
    /// The node's certificate, pinned by the clients.
    var certPath: String { get }
    /// Whether `stop()` and `start()` can restart it (on the same data and port).
    var canRestart: Bool { get }
    func start() throws
    /// Ends the node at once (SIGKILL: no goodbye to its clients).
    func stop()
}

#if os(macOS) || os(Linux)
/// A tether-server process on free loopback ports, restartable on the same data and ports (the
/// clients' node address and registry URL stay valid).
final class LocalNode: TestNode, @unchecked Sendable {
    let bin: String
    let dir: URL
    let adminToken = "ios-demo-test-admin"
    private(set) var quic = "127.0.0.1:0"
    private(set) var admin = ""
    private var process: Process?

    init(bin: String) throws {
        self.bin = bin
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-ios-demo-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    var canRestart: Bool { true }
    var certPath: String { dir.appendingPathComponent("dev-cert.pem").path }

    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = [
            "--data-dir", dir.path, "--quic-addr", quic, "--admin-addr", admin.isEmpty ? "127.0.0.1:0" : admin,
            "--admin-token", adminToken, "--log", "warn",
        ]
        let out = Pipe()
        p.standardOutput = out
        let logURL = dir.appendingPathComponent("server.log")
        if !FileManager.default.fileExists(atPath: logURL.path) {
            FileManager.default.createFile(atPath: logURL.path, contents: nil)
        }
        let log = try FileHandle(forWritingTo: logURL)
        _ = log.seekToEndOfFile()
        p.standardError = log
        try p.run()
        // The first line names the bound addresses: "TETHER_READY quic=ADDR admin=ADDR".
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
            p.terminate()
            throw TestFailure(description: "the node did not start: \(text)")
        }
        quic = q
        admin = a
        process = p
    }

    func stop() {
        guard let p = process else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        process = nil
    }
}
#endif

/// A node someone else started (an iOS simulator cannot start processes): it cannot be
/// restarted, so the scenario leaves out its restart step.
final class ExternalNode: TestNode, @unchecked Sendable {
    let quic: String
    let admin: String
    let adminToken: String
    let certPath: String

    init(quic: String, admin: String, adminToken: String, certPath: String) {
        self.quic = quic
        self.admin = admin
        self.adminToken = adminToken
        self.certPath = certPath
    }

    /// From `TETHER_DEMO_NODE_QUIC`, `TETHER_DEMO_NODE_ADMIN`, `TETHER_DEMO_NODE_ADMIN_TOKEN` and
    /// `TETHER_DEMO_NODE_CERT`, if set.
    static func fromEnvironment() -> ExternalNode? {
        let env = ProcessInfo.processInfo.environment
        guard let quic = env["TETHER_DEMO_NODE_QUIC"], let admin = env["TETHER_DEMO_NODE_ADMIN"],
              let token = env["TETHER_DEMO_NODE_ADMIN_TOKEN"], let cert = env["TETHER_DEMO_NODE_CERT"] else {
            return nil
        }
        return ExternalNode(quic: quic, admin: admin, adminToken: token, certPath: cert)
    }

    var canRestart: Bool { false }
    func start() throws {}
    func stop() {}
}

/// A one-time login ticket from the node's admin API.
func ticket(_ node: TestNode, _ user: String) async throws -> String {
    var request = URLRequest(url: URL(string: "http://\(node.admin)/v1/tickets")!)
    request.httpMethod = "POST"
    request.setValue("Bearer \(node.adminToken)", forHTTPHeaderField: "Authorization")
    request.setValue("application/json", forHTTPHeaderField: "Content-Type")
    request.httpBody = try JSONSerialization.data(withJSONObject: ["user": user])
    let (data, _) = try await URLSession.shared.data(for: request)
    let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
    guard let ticket = object?["ticket"] as? String else {
        throw TestFailure(description: "no ticket for \(user): \(String(decoding: data, as: UTF8.self))")
    }
    return ticket
}

/// Fast timers, so that a lost node is noticed within about a second.
let testTiming = Timing(heartbeatIntervalMs: 500, heartbeatTimeoutMs: 1000, backoffBaseMs: 100, backoffMaxMs: 1000, ackTimeoutMs: 3000)

/// Every model a store has published, in order.
actor ModelLog {
    private var models: [ScreenModel] = []

    func append(_ model: ScreenModel) {
        models.append(model)
    }

    func from(_ index: Int) -> [ScreenModel] {
        index < models.count ? Array(models[index...]) : []
    }

    var last: ScreenModel? { models.last }
}

/// A store under test and everything it published.
final class Watched: @unchecked Sendable {
    let name: String
    let store: ChatStore
    private let log = ModelLog()
    private var task: Task<Void, Never>?
    /// Where the next `until` starts looking (the model that matched last time is looked at again).
    private var next = 0

    init(_ name: String, _ store: ChatStore) {
        self.name = name
        self.store = store
        let updates = store.updates()
        let log = self.log
        task = Task {
            for await model in updates { await log.append(model) }
        }
    }

    deinit {
        task?.cancel()
    }

    /// Waits until a model published since the last match (that one included) satisfies
    /// `condition`, and returns it: no state the store went through is missed.
    @discardableResult
    func until(_ what: String, timeout: Double = 30, _ condition: (ScreenModel) -> Bool) async throws -> ScreenModel {
        let deadline = Date().addingTimeInterval(timeout)
        var index = max(0, next - 1)
        while true {
            let batch = await log.from(index)
            for (offset, model) in batch.enumerated() where condition(model) {
                next = index + offset + 1
                return model
            }
            index += batch.count
            if Date() > deadline {
                let last = await log.last
                throw TestFailure(description: "\(name): timed out after \(Int(timeout)) s waiting for: \(what)\n  now: \(last.map(describe) ?? "no model")")
            }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
    }
}

/// A model in one line, for failure messages.
func describe(_ model: ScreenModel) -> String {
    let rows = ConversationList.rows(model).map { row in
        "\(row.id) unread=\(row.unread) \"\(row.preview)\"\(row.roomCounts.map { " (\($0))" } ?? "")"
    }
    return "me=\(model.me ?? "?") banner=\(model.banner) open=\(model.open.map { "\($0)" } ?? "-") rows=[\(rows.joined(separator: "; "))]"
}

/// The texts of a conversation's lines, in display order.
func texts(_ model: ScreenModel, _ id: ConversationID) -> [String] {
    model.lines(id).map { $0.text }
}

/// Fails the body when it does not end within `seconds`.
func within<T: Sendable>(_ seconds: Double, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            throw TestFailure(description: "timed out after \(Int(seconds)) s")
        }
        let first = try await group.next()!
        group.cancelAll()
        return first
    }
}
