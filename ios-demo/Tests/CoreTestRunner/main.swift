// The plain runner ios-demo/scripts/core-test builds with swiftc (where a Swift toolchain
// exists) together with Harness.swift, LogicChecks.swift and Scenario.swift from
// Tests/TetherDemoCoreTests: the logic checks, then the scenario against a real tether-server
// process that it starts (and restarts) itself.
// Usage: ios-demo-core-test <tether-server binary>
import Foundation
import TetherDemoCore
import TetherSDK

final class Steps: @unchecked Sendable {
    var done = 0
}

/// Runs everything; returns (passed, failed).
func runCoreTests(serverBinary: String) async -> (Int, Int) {
    var passed = 0
    var failed = 0
    for check in logicChecks() {
        do {
            try check.run()
            passed += 1
            print("ok   \(check.name)")
        } catch {
            failed += 1
            print("FAIL \(check.name): \(error)")
        }
    }

    let node: LocalNode
    do {
        node = try LocalNode(bin: serverBinary)
        try node.start()
    } catch {
        print("FAIL scenario: the node did not start: \(error)")
        return (passed, failed + 1)
    }
    let workDir = FileManager.default.temporaryDirectory.appendingPathComponent("ios-demo-scenario-\(UUID().uuidString)")
    let steps = Steps()
    do {
        try await within(600) {
            try await runScenario(node: node, workDir: workDir) { name in
                steps.done += 1
                print("ok   scenario: \(name)")
            }
        }
    } catch {
        failed += 1
        print("FAIL scenario (after \(steps.done) steps): \(error)")
    }
    passed += steps.done
    node.stop()
    try? FileManager.default.removeItem(at: workDir)
    try? FileManager.default.removeItem(at: node.dir)
    return (passed, failed)
}

let arguments = CommandLine.arguments
guard arguments.count > 1 else {
    print("usage: ios-demo-core-test <tether-server binary>")
    exit(2)
}
let (passed, failed) = await runCoreTests(serverBinary: arguments[1])
print("ios-demo: \(passed) passed, \(failed) failed")
exit(failed == 0 ? 0 : 1)
