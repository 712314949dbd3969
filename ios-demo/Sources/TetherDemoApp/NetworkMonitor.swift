// NWPathMonitor -> the core's NetworkPath -> ChatStore.pathUpdated -> the SDK's
// networkChanged() when the path really changed (the core's NetworkChangeDetector decides).
import Foundation
import Network
import TetherDemoCore

final class NetworkMonitor {
    private let monitor = NWPathMonitor()
    private let queue = DispatchQueue(label: "tether-demo.network")
    /// Called on the monitor's queue with every path update.
    var onPath: (@Sendable (NetworkPath) -> Void)?

    func start() {
        monitor.pathUpdateHandler = { [weak self] path in
            self?.onPath?(NetworkMonitor.snapshot(path))
        }
        monitor.start(queue: queue)
    }

    func stop() {
        monitor.cancel()
    }

    deinit {
        monitor.cancel()
    }

    /// The parts of an NWPath that tell one network from another.
    static func snapshot(_ path: NWPath) -> NetworkPath {
        let kinds: [(NWInterface.InterfaceType, String)] = [
            (.wifi, "wifi"), (.cellular, "cellular"), (.wiredEthernet, "ethernet"), (.loopback, "loopback"), (.other, "other"),
        ]
        let interfaces = kinds.filter { path.usesInterfaceType($0.0) }.map { $0.1 }
        return NetworkPath(usable: path.status == .satisfied, interfaces: interfaces, expensive: path.isExpensive)
    }
}
