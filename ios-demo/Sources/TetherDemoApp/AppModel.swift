// The SwiftUI side of the store: publishes the core's screen model on the main actor, and
// forwards the user's actions and the platform's signals (scene phase, NWPathMonitor) to it.
// Everything it decides lives in TetherDemoCore; this file only adapts.
import SwiftUI
import TetherDemoCore
import TetherSDK
import UIKit

@MainActor
final class AppModel: ObservableObject {
    @Published private(set) var screen = ScreenModel()
    @Published private(set) var signedIn = false
    @Published private(set) var signingIn = false
    @Published var signInError: String?
    /// The navigation stack: the open conversation.
    @Published var path: [ConversationID] = []

    private var store: ChatStore?
    private var updates: Task<Void, Never>?
    private let network = NetworkMonitor()
    private let files: AccountFiles?

    init() {
        files = try? AccountFiles.applicationSupport()
        network.onPath = { @Sendable [weak self] path in
            guard let model = self else { return }
            Task { @MainActor in await model.store?.pathUpdated(path) }
        }
        network.start()
        // Signed in before: start again (after a ticket login the SDK uses its resume token).
        if let saved = files?.loadSettings() {
            Task { try? await self.start(saved) }
        }
    }

    // MARK: Sign in and out

    func signIn(endpoint: String, secret: String, kind: CredentialKind?, certificate: String) async {
        guard let files = files else {
            signInError = "No place to keep the account (Application Support is not available)"
            return
        }
        signInError = nil
        do {
            let pinned = try files.pinnedCertificate(from: certificate)
            let settings = try SignInForm.parse(endpoint: endpoint, secret: secret, kind: kind, pinnedCertificatePath: pinned)
            try await start(settings)
            try files.saveSettings(settings)
        } catch {
            signInError = "\(error)"
        }
    }

    private func start(_ settings: AccountSettings) async throws {
        guard let files = files, store == nil else { return }
        signingIn = true
        defer { signingIn = false }
        let store = ChatStore(settings: settings, options: files.storeOptions())
        try await store.start()
        self.store = store
        signedIn = true
        updates = Task { [weak self] in
            for await model in store.updates() {
                self?.screen = model
            }
        }
    }

    func signOut() async {
        updates?.cancel()
        updates = nil
        await store?.signOut()
        store = nil
        files?.forget()
        path = []
        screen = ScreenModel()
        signedIn = false
    }

    // MARK: Platform signals

    /// Scene phase -> the core's LifecycleGate -> pause() / resume(). Going to the background,
    /// the app asks iOS for a few seconds so that the SDK can ack and log out politely.
    func scenePhaseChanged(_ phase: ScenePhase) {
        let mapped: AppPhase
        switch phase {
        case .active: mapped = .active
        case .inactive: mapped = .inactive
        case .background: mapped = .background
        @unknown default: return
        }
        guard let store = store else { return }
        let background = mapped == .background
            ? UIApplication.shared.beginBackgroundTask(withName: "tether-pause", expirationHandler: nil)
            : UIBackgroundTaskIdentifier.invalid
        Task { @MainActor in
            await store.phaseChanged(mapped)
            guard background != .invalid else { return }
            // The SDK logs out on its own threads; the banner says when it is done (at most 3 s,
            // well within the time iOS gives).
            for _ in 0..<30 {
                let banner = await store.current.banner
                if banner == .paused { break }
                try? await Task.sleep(nanoseconds: 100_000_000)
            }
            UIApplication.shared.endBackgroundTask(background)
        }
    }

    // MARK: The user's actions

    func open(_ id: ConversationID) {
        Task { await store?.open(id) }
    }

    func close(_ id: ConversationID) {
        Task {
            if screen.open == id { await store?.closeConversation() }
        }
    }

    func startChat(with user: String) async throws -> ConversationID {
        guard let store = store else { throw ChatStoreError.notStarted }
        return try await store.startChat(with: user)
    }

    func joinRoom(_ room: String) async throws -> ConversationID {
        guard let store = store else { throw ChatStoreError.notStarted }
        let joined = try await store.joinRoom(room)
        return .room(joined.room)
    }

    func send(_ text: String, to id: ConversationID) {
        Task {
            do {
                try await store?.send(text, to: id)
            } catch {
                screen.alert = "\(error)"
            }
        }
    }

    func cancel(_ message: ChatMessage) {
        Task { _ = try? await store?.cancel(message) }
    }

    func loadOlder(room: String) {
        Task { _ = try? await store?.loadOlder(room: room) }
    }

    func leave(room: String) {
        Task { try? await store?.leaveRoom(room) }
    }

    func remove(_ id: ConversationID) {
        Task { await store?.remove(id) }
    }

    func dismissAlert() {
        Task { await store?.dismissAlert() }
        screen.alert = nil
    }
}
