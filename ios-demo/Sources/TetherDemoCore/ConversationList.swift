// The conversation list: one row per 1:1 conversation and room, most recent first.
import Foundation
import TetherSDK

/// One row of the conversation list.
public struct ConversationRow: Hashable, Sendable, Identifiable {
    public var id: ConversationID
    /// The other user, or the room (`#lobby`).
    public var title: String
    /// The last message (`You: ...`, `bob: ...` in rooms), or a hint when there is none.
    public var preview: String
    /// When the last message was sent (ms), if there is one.
    public var lastTimeMs: UInt64?
    /// The delivery state of the last message when it is the user's own.
    public var lastDelivery: DeliveryState?
    public var unread: Int
    /// The other user's presence (1:1 only).
    public var presence: PresenceStatus?
    /// `3 members, 2 online` (rooms only).
    public var roomCounts: String?
    /// What the list is ordered by: the last message's time, else when the conversation began.
    public var activityMs: UInt64
}

public enum ConversationList {
    /// The rows, most recent activity first (ties: by id, so the order is stable).
    public static func rows(_ model: ScreenModel) -> [ConversationRow] {
        model.conversations.values.map { row($0, model) }.sorted { a, b in
            if a.activityMs != b.activityMs { return a.activityMs > b.activityMs }
            return a.id.description < b.id.description
        }
    }

    /// The last message of a conversation (notices are not messages).
    public static func lastMessage(_ id: ConversationID, _ model: ScreenModel) -> ChatMessage? {
        let lines = model.lines(id).filter { $0.kind == .message }
        guard id.isRoom else { return lines.last }
        // In a room the newest is the highest seq; pending messages (no seq yet) are newer still.
        if let pending = lines.last(where: { $0.seq == nil }) { return pending }
        return lines.max { ($0.seq ?? 0) < ($1.seq ?? 0) }
    }

    static func row(_ conversation: Conversation, _ model: ScreenModel) -> ConversationRow {
        let id = conversation.id
        let last = lastMessage(id, model)
        let preview: String
        if let last = last {
            preview = Format.preview(last, me: model.me, isRoom: id.isRoom)
        } else if let room = conversation.room, room.left {
            preview = "You left this room"
        } else {
            preview = id.isRoom ? "No messages yet" : "Say hello"
        }
        var presence: PresenceStatus?
        if case let .user(user) = id { presence = model.presence[user] ?? .unknown }
        return ConversationRow(
            id: id,
            title: id.isRoom ? "#\(id.name)" : id.name,
            preview: preview,
            lastTimeMs: last?.timeMs,
            lastDelivery: last.flatMap { $0.isMine(model.me) ? $0.delivery : nil },
            unread: conversation.unread,
            presence: presence,
            roomCounts: conversation.room.map(Format.roomCounts),
            activityMs: last?.timeMs ?? conversation.createdMs
        )
    }
}
