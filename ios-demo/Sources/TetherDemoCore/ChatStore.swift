// The app's store: one signed-in account. It owns the SDK client, turns its events into the
// screen model, forwards the user's actions and the platform's lifecycle to the SDK, and keeps
// the display cache. Observers (the SwiftUI layer, the tests) get every new model through
// `updates()`.
import Foundation
import TetherSDK

public enum ChatStoreError: Error, Hashable, CustomStringConvertible {
    /// `start()` has not succeeded (or the store was stopped).
    case notStarted
    case emptyMessage
    case emptyName

    public var description: String {
        switch self {
        case .notStarted: return "Not signed in"
        case .emptyMessage: return "The message is empty"
        case .emptyName: return "Enter a name"
        }
    }
}

public actor ChatStore {
    public struct Options: Sendable {
        /// The SDK's state dir: outbox, cursors, resume token, device id.
        public var stateDir: URL
        /// The app's display cache (nil: none).
        public var cache: (any DisplayCacheStorage)?
        /// nil: the SDK makes one and keeps it in the state dir.
        public var deviceId: String?
        /// nil: the SDK's defaults.
        public var timing: Timing?
        /// Connection metadata shown in presence.
        public var metadata: [String: String]
        /// How many older room messages one "load earlier messages" asks for.
        public var historyPageSize: UInt64

        public init(stateDir: URL, cache: (any DisplayCacheStorage)? = nil, deviceId: String? = nil, timing: Timing? = nil,
                    metadata: [String: String] = ["app": "tether-ios-demo"], historyPageSize: UInt64 = 30) {
            self.stateDir = stateDir
            self.cache = cache
            self.deviceId = deviceId
            self.timing = timing
            self.metadata = metadata
            self.historyPageSize = historyPageSize
        }
    }

    private let settings: AccountSettings
    private let options: Options
    private let clock: @Sendable () -> Date
    private var client: TetherClient?
    private var starting = false
    private var model: ScreenModel
    private var eventTask: Task<Void, Never>?
    private var observers: [UUID: AsyncStream<ScreenModel>.Continuation] = [:]
    private var lifecycle = LifecycleGate()
    private var network = NetworkChangeDetector()
    private var saveScheduled = false
    /// Messages acknowledged since `start()`: the outbox read at start may still list them.
    private var acknowledged = Set<String>()

    public init(settings: AccountSettings, options: Options, clock: @escaping @Sendable () -> Date = { Date() }) {
        self.settings = settings
        self.options = options
        self.clock = clock
        var initial = options.cache?.load().map { ScreenModel(cached: $0) } ?? ScreenModel()
        if initial.me == nil { initial.me = settings.knownUser }
        model = initial
    }

    /// The screen model now.
    public var current: ScreenModel { model }

    /// Every model from now on, starting with the current one.
    public nonisolated func updates() -> AsyncStream<ScreenModel> {
        let id = UUID()
        return AsyncStream(bufferingPolicy: .unbounded) { continuation in
            continuation.onTermination = { [weak self] _ in
                guard let store = self else { return }
                Task { await store.removeObserver(id) }
            }
            Task { await self.addObserver(id, continuation) }
        }
    }

    private func addObserver(_ id: UUID, _ continuation: AsyncStream<ScreenModel>.Continuation) {
        observers[id] = continuation
        continuation.yield(model)
    }

    private func removeObserver(_ id: UUID) {
        observers[id] = nil
    }

    private func publish() {
        for continuation in observers.values { continuation.yield(model) }
    }

    private func nowMs() -> UInt64 {
        UInt64(max(0, clock().timeIntervalSince1970 * 1000))
    }

    // MARK: Lifecycle of the account

    /// Starts the SDK client: it connects, logs in and keeps the session up. Throws for what
    /// is wrong at once (an address that does not resolve, an unreadable certificate); a node
    /// that does not answer is retried by the SDK (the banner says so).
    public func start() async throws {
        guard client == nil, !starting else { return }
        starting = true
        defer { starting = false }
        try FileManager.default.createDirectory(at: options.stateDir, withIntermediateDirectories: true)
        let config = settings.clientConfig(
            stateDir: options.stateDir.path, deviceId: options.deviceId, timing: options.timing, metadata: options.metadata
        )
        let credential = settings.credential
        let started = try await startClient(config: config, credentials: ClosureCredentialProvider { credential })
        client = started
        acknowledged = []
        // Listen first, then read the state: events from before the listener are not replayed.
        let events = started.events()
        eventTask = Task.detached { [weak self] in
            for await event in events {
                guard let store = self else { return }
                await store.handle(event)
            }
        }
        model.banner = Banner(started.state(), nowMs: nowMs())
        publish()

        // Local echo of what the SDK still has to send (after a restart: typed, never acked).
        if let outbox = try? await started.outbox() {
            model.restoreOutbox(outbox.filter { !acknowledged.contains($0.clientMsgId) }, nowMs: nowMs())
        }
        subscribePresence(model.userPeers)
        // Rooms from the cache: a repeated join answers their current counts.
        for (id, conversation) in model.conversations {
            if case let .room(room) = id, conversation.room?.left == false {
                Task { await self.refresh(room: room) }
            }
        }
        publish()
        scheduleSave()
    }

    private func refresh(room: String) async {
        guard let client = client, let joined = try? await client.joinRoom(room: room) else { return }
        model.apply(.roomJoined(joined: joined), nowMs: nowMs())
        publish()
    }

    private func handle(_ event: Event) {
        let peers = model.userPeers
        if case let .sendAcked(ack) = event { acknowledged.insert(ack.clientMsgId) }
        model.apply(event, nowMs: nowMs())
        let added = model.userPeers.subtracting(peers)
        if !added.isEmpty { subscribePresence(added) }
        publish()
        scheduleSave()
    }

    private func subscribePresence(_ users: Set<String>) {
        guard let client = client, !users.isEmpty else { return }
        try? client.subscribePresence(users: users.sorted())
    }

    /// Logs out and stops the client (the app's "sign out" calls `signOut()`). The SDK's
    /// outbox and cursors stay in the state dir for the next start.
    public func stop() async {
        guard let client = client else { return }
        self.client = nil
        await client.stop()
        eventTask?.cancel()
        eventTask = nil
        model.banner = .signedOut
        publish()
        saveNow()
    }

    /// Signs out for good: stops, then forgets this account's local data (the display cache,
    /// and the SDK's state dir with its outbox: unsent messages are dropped).
    public func signOut() async {
        await stop()
        options.cache?.delete()
        try? FileManager.default.removeItem(at: options.stateDir)
        for continuation in observers.values { continuation.finish() }
        observers = [:]
    }

    // MARK: Platform signals

    /// The app's phase changed: background -> `pause()`, active again -> `resume()`.
    public func phaseChanged(_ phase: AppPhase) {
        guard let action = lifecycle.phaseChanged(to: phase) else { return }
        switch action {
        case .pause: pause()
        case .resume: resume()
        }
    }

    /// The app went to the background: the SDK acks what it handed over and logs out politely;
    /// sends keep going into the outbox.
    public func pause() {
        try? client?.pause()
        saveNow()
    }

    /// Back in front: the SDK reconnects at once and delivers what arrived meanwhile.
    public func resume() {
        try? client?.resume()
    }

    /// A path update from the network monitor; tells the SDK when it is a change.
    public func pathUpdated(_ path: NetworkPath) async {
        if network.pathUpdated(path) { await networkChanged() }
    }

    /// The network changed: the SDK moves the QUIC connection to a new socket.
    public func networkChanged() async {
        guard let client = client else { return }
        try? await client.networkChanged()
    }

    // MARK: The user's actions

    /// The user opened a conversation: its unread count goes to 0.
    public func open(_ id: ConversationID) {
        model.markOpened(id, nowMs: nowMs())
        publish()
        scheduleSave()
    }

    /// The user went back to the list.
    public func closeConversation() {
        model.closeConversation()
        publish()
    }

    /// A new 1:1 conversation (opened).
    @discardableResult
    public func startChat(with user: String) throws -> ConversationID {
        let name = user.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !name.isEmpty else { throw ChatStoreError.emptyName }
        let id = ConversationID.user(name)
        let peers = model.userPeers
        model.markOpened(id, nowMs: nowMs())
        if !peers.contains(name) { subscribePresence([name]) }
        publish()
        scheduleSave()
        return id
    }

    /// Sends a text message. Returns its local echo, `pending` until the server has it.
    @discardableResult
    public func send(_ text: String, to id: ConversationID) throws -> ChatMessage {
        guard let client = client else { throw ChatStoreError.notStarted }
        let body = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !body.isEmpty else { throw ChatStoreError.emptyMessage }
        let handle = client.send(to: id.target, contentType: "text/plain", payload: Data(body.utf8))
        let echo = model.addOutgoing(clientMsgId: handle.clientMsgId(), to: id, text: body, nowMs: nowMs())
        publish()
        scheduleSave()
        return echo
    }

    /// Takes a pending message out of the outbox. Returns nil when it was not there any more,
    /// else whether it may have reached the server already.
    public func cancel(_ message: ChatMessage) async throws -> Bool? {
        guard let client = client else { throw ChatStoreError.notStarted }
        return try await client.cancel(clientMsgId: message.clientMsgId)
    }

    /// Joins (or creates) a room and shows it in the list.
    @discardableResult
    public func joinRoom(_ room: String) async throws -> RoomJoined {
        guard let client = client else { throw ChatStoreError.notStarted }
        let name = room.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !name.isEmpty else { throw ChatStoreError.emptyName }
        let joined = try await client.joinRoom(room: name)
        model.apply(.roomJoined(joined: joined), nowMs: nowMs())
        publish()
        scheduleSave()
        return joined
    }

    /// Leaves a room (it stays in the list, marked as left, until removed).
    public func leaveRoom(_ room: String) async throws {
        guard let client = client else { throw ChatStoreError.notStarted }
        try await client.leaveRoom(room: room)
        model.markLeft(room: room, nowMs: nowMs())
        publish()
        scheduleSave()
    }

    /// Fetches the next page of older messages of a room; false when there is none.
    @discardableResult
    public func loadOlder(room: String) throws -> Bool {
        guard let client = client else { throw ChatStoreError.notStarted }
        guard let after = model.requestOlder(room: room, pageSize: options.historyPageSize) else { return false }
        try client.syncRoom(room: room, after: after)
        publish()
        return true
    }

    /// Removes a conversation from the list (a room is left first).
    public func remove(_ id: ConversationID) async {
        if case let .room(room) = id, model.conversations[id]?.room?.left == false {
            try? await leaveRoom(room)
        }
        model.remove(id)
        publish()
        scheduleSave()
    }

    /// The alert was shown.
    public func dismissAlert() {
        model.alert = nil
        publish()
    }

    // MARK: The display cache

    private func scheduleSave() {
        guard options.cache != nil, !saveScheduled else { return }
        saveScheduled = true
        Task { [weak self] in
            try? await Task.sleep(nanoseconds: 500_000_000)
            await self?.saveNow()
        }
    }

    private func saveNow() {
        saveScheduled = false
        try? options.cache?.save(model.cacheSnapshot())
    }
}
