// The connection banner: the SDK's connection state as the app shows it.
import Foundation
import TetherSDK

/// What the banner at the top of every screen says about the connection.
public enum Banner: Hashable, Sendable {
    /// Connecting or logging in (also before the first state arrives).
    case connecting
    /// Logged in: messages flow.
    case online
    /// The connection is down; attempt `attempt + 1` starts at `retryAtMs` (ms since the Unix
    /// epoch).
    case backingOff(attempt: UInt32, retryAtMs: UInt64)
    /// The app is in the background: the SDK logged out politely and waits for `resume()`.
    case paused
    /// The server ended the session; no reconnect until the user signs in again.
    case kicked(KickReason)
    /// The server refused the credential.
    case refused(ErrorCode)
    /// The user signed out.
    case signedOut

    /// The banner for a connection state reported at `nowMs`.
    public init(_ state: ConnectionState, nowMs: UInt64) {
        switch state {
        case .idle, .connecting, .loggingIn:
            self = .connecting
        case .online:
            self = .online
        case let .backoff(attempt, retryInMs):
            self = .backingOff(attempt: attempt, retryAtMs: nowMs &+ retryInMs)
        case .paused:
            self = .paused
        case let .kicked(reason):
            self = .kicked(reason)
        case let .authFailed(code):
            self = .refused(code)
        case .loggedOut:
            self = .signedOut
        }
    }

    /// Messages flow: the banner can be hidden.
    public var isOnline: Bool { self == .online }

    /// Not connected now, but the SDK is working on it (or waits for the app to come back).
    public var isOffline: Bool {
        switch self {
        case .connecting, .backingOff, .paused: return true
        default: return false
        }
    }

    /// The session is over until the user signs in again.
    public var needsSignIn: Bool {
        switch self {
        case .kicked, .refused, .signedOut: return true
        default: return false
        }
    }
}
