// The platform's lifecycle and network signals, reduced to the SDK calls they mean. The app
// target maps SwiftUI's scene phase and NWPathMonitor's paths onto these plain types; what to
// call when is decided (and tested) here.
import Foundation

/// The app's phase (SwiftUI's `ScenePhase`, without SwiftUI).
public enum AppPhase: String, Hashable, Sendable {
    case active
    case inactive
    case background
}

/// What a phase change asks of the SDK.
public enum LifecycleAction: Hashable, Sendable {
    /// `pause()`: acks what was received, logs out politely, closes the connection.
    case pause
    /// `resume()`: reconnects at once and receives what arrived meanwhile.
    case resume
}

/// Background -> `pause()`, back to active -> `resume()`. `inactive` (the app switcher, a
/// notification pulled down, a system alert) keeps the connection.
public struct LifecycleGate: Hashable, Sendable {
    public private(set) var paused = false

    public init() {}

    public mutating func phaseChanged(to phase: AppPhase) -> LifecycleAction? {
        switch phase {
        case .background:
            guard !paused else { return nil }
            paused = true
            return .pause
        case .active:
            guard paused else { return nil }
            paused = false
            return .resume
        case .inactive:
            return nil
        }
    }
}

/// A network path as NWPathMonitor reports it, without Network.framework.
public struct NetworkPath: Hashable, Sendable {
    /// The path can be used (`NWPath.status == .satisfied`).
    public var usable: Bool
    /// The interface types it goes through, e.g. `["wifi"]`, `["cellular"]`.
    public var interfaces: [String]
    /// Cellular or a personal hotspot.
    public var expensive: Bool

    public init(usable: Bool, interfaces: [String], expensive: Bool = false) {
        self.usable = usable
        self.interfaces = interfaces
        self.expensive = expensive
    }
}

/// Decides when a path update is a network change the SDK must hear about
/// (`network_changed()`: the QUIC connection moves to a new socket, a pending reconnect is
/// tried at once). NWPathMonitor reports the current path first, then every update, often
/// several for one change: only a usable path that differs from the last one counts. A path
/// that became unusable is not reported: there is nothing to move to, and the SDK notices the
/// loss by itself.
public struct NetworkChangeDetector: Hashable, Sendable {
    private var last: NetworkPath?

    public init() {}

    public mutating func pathUpdated(_ path: NetworkPath) -> Bool {
        defer { last = path }
        guard let previous = last else { return false }
        guard path.usable else { return false }
        return !previous.usable || previous.interfaces != path.interfaces || previous.expensive != path.expensive
    }
}
