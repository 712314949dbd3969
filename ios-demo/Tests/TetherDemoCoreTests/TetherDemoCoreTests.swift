// The XCTest face of the core's tests (Xcode: Product > Test on an iOS simulator, or
// `xcodebuild test`): the logic checks always; the scenario against a real node when one is
// reachable: on macOS a tether-server binary named by TETHER_SERVER_BIN (started and restarted
// by the test), anywhere a node started by hand and named by TETHER_DEMO_NODE_QUIC,
// TETHER_DEMO_NODE_ADMIN, TETHER_DEMO_NODE_ADMIN_TOKEN and TETHER_DEMO_NODE_CERT (the restart
// step is then left out). ios-demo/scripts/core-test runs the same checks and scenario with
// swiftc where a Swift toolchain exists.
#if canImport(XCTest)
import Foundation
import TetherDemoCore
import TetherSDK
import XCTest

final class TetherDemoCoreTests: XCTestCase {
    private func runCheck(_ name: String) throws {
        guard let check = logicChecks().first(where: { $0.name.hasPrefix(name) }) else {
            XCTFail("no logic check named \(name)")
            return
        }
        try check.run()
    }

    func testSignInForm() throws { try runCheck("sign-in form") }
    func testBanner() throws { try runCheck("banner") }
    func testOneToOne() throws { try runCheck("1:1") }
    func testRooms() throws { try runCheck("rooms") }
    func testConversationList() throws { try runCheck("conversation list") }
    func testFormatting() throws { try runCheck("formatting") }
    func testLifecycle() throws { try runCheck("lifecycle") }
    func testDisplayCache() throws { try runCheck("display cache") }
    func testAccountFiles() throws { try runCheck("account files") }

    func testEveryLogicCheckHasATest() {
        let covered = ["sign-in form", "banner", "1:1", "rooms", "conversation list", "formatting", "lifecycle", "display cache", "account files"]
        for check in logicChecks() {
            XCTAssertTrue(covered.contains { check.name.hasPrefix($0) }, "no XCTest method runs \(check.name)")
        }
    }

    func testScenarioAgainstARealNode() async throws {
        let node: TestNode
        #if os(macOS)
        if let bin = ProcessInfo.processInfo.environment["TETHER_SERVER_BIN"] {
            let local = try LocalNode(bin: bin)
            try local.start()
            node = local
        } else if let external = ExternalNode.fromEnvironment() {
            node = external
        } else {
            throw XCTSkip("set TETHER_SERVER_BIN, or the TETHER_DEMO_NODE_* variables, to run the scenario")
        }
        #else
        guard let external = ExternalNode.fromEnvironment() else {
            throw XCTSkip("set the TETHER_DEMO_NODE_* variables to run the scenario against a node")
        }
        node = external
        #endif
        defer { node.stop() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ios-demo-scenario-\(UUID().uuidString)")
        try await runScenario(node: node, workDir: dir) { print("ok   scenario: \($0)") }
    }
}
#endif
