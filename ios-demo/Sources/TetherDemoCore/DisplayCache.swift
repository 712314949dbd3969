// The app's own small display cache: the conversation list and the last messages of each
// conversation, so that the screens are not empty while the client reconnects after a restart.
// It is only for display: the SDK keeps the outbox and the cursors (what was received and what
// is still to be sent) in its state dir, and it alone decides what is delivered.
import Foundation
import TetherSDK

/// What the cache keeps.
public struct CachedState: Codable, Hashable, Sendable {
    public struct Entry: Codable, Hashable, Sendable {
        public var conversation: Conversation
        public var messages: [ChatMessage]
    }

    public static let currentVersion = 1

    public var version: Int
    public var me: String?
    public var entries: [Entry]
    public var noticeCounter: UInt64

    public init(version: Int = CachedState.currentVersion, me: String?, entries: [Entry], noticeCounter: UInt64) {
        self.version = version
        self.me = me
        self.entries = entries
        self.noticeCounter = noticeCounter
    }
}

/// Where the cache lives.
public protocol DisplayCacheStorage: AnyObject, Sendable {
    func load() -> CachedState?
    func save(_ state: CachedState) throws
    func delete()
}

/// The cache as one JSON file, written atomically.
public final class FileDisplayCache: DisplayCacheStorage, @unchecked Sendable {
    public let url: URL

    public init(url: URL) {
        self.url = url
    }

    public func load() -> CachedState? {
        guard let data = try? Data(contentsOf: url),
              let state = try? JSONDecoder().decode(CachedState.self, from: data),
              state.version == CachedState.currentVersion else {
            return nil
        }
        return state
    }

    public func save(_ state: CachedState) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let data = try JSONEncoder().encode(state)
        try data.write(to: url, options: .atomic)
    }

    public func delete() {
        try? FileManager.default.removeItem(at: url)
    }
}

extension ScreenModel {
    /// How many lines per conversation the cache keeps (the newest).
    public static let cachedLinesPerConversation = 100

    /// The model as the cache keeps it: no presence, no banner (both are live state), at most
    /// `limit` lines per conversation.
    public func cacheSnapshot(limit: Int = ScreenModel.cachedLinesPerConversation) -> CachedState {
        let entries = conversations.values
            .sorted { $0.id.description < $1.id.description }
            .map { CachedState.Entry(conversation: $0, messages: Array(lines($0.id).suffix(limit))) }
        return CachedState(me: me, entries: entries, noticeCounter: noticeCounter)
    }

    /// The model a cached state shows before the client has said anything.
    public init(cached: CachedState) {
        self.init(me: cached.me)
        noticeCounter = cached.noticeCounter
        for entry in cached.entries {
            // Room counts are as they were; the store asks for fresh ones (a repeated join).
            conversations[entry.conversation.id] = entry.conversation
            messages[entry.conversation.id] = entry.messages
        }
    }
}
