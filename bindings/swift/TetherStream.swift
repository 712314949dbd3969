// A thin Swift adapter over the generated bindings: it only adapts (no logic). Compiled into
// the same module as the generated `tether_ffi.swift` (build-xcframework copies both).
import Foundation

/// An `EventListener` from a closure, called once per event, in order, on the SDK's listener
/// thread. The SDK hands events over in batches (one call per burst); this unpacks them.
public final class ClosureEventListener: EventListener, @unchecked Sendable {
    private let onEvent: @Sendable (Event) -> Void

    public init(_ onEvent: @escaping @Sendable (Event) -> Void) {
        self.onEvent = onEvent
    }

    public func onEvents(events: [Event]) {
        for event in events {
            onEvent(event)
        }
    }
}

/// A `CredentialProvider` from a closure (e.g. one that asks the app's backend for a JWT). It
/// is called on an SDK thread and may block.
public final class ClosureCredentialProvider: CredentialProvider, @unchecked Sendable {
    private let get: @Sendable () -> Credential?

    public init(_ get: @escaping @Sendable () -> Credential?) {
        self.get = get
    }

    public func credential() -> Credential? {
        get()
    }
}

extension TetherClient {
    /// The client's events as an `AsyncStream`: creating it registers a listener; when the
    /// iterating task ends or is cancelled, the listener stops. Events are buffered without
    /// limit, so a slow consumer never stalls the client (every message is still handed over
    /// exactly once, in order).
    public func events() -> AsyncStream<Event> {
        AsyncStream(bufferingPolicy: .unbounded) { continuation in
            let registration = self.addListener(listener: ClosureEventListener { event in
                continuation.yield(event)
            })
            continuation.onTermination = { _ in
                registration.stop()
            }
        }
    }
}
