// The demo app's display model: conversations, the messages shown in them, rooms and presence.
// Plain values (Codable for the display cache), no UI and no SDK state: the SDK owns the outbox
// and the cursors; this is only what the screens show.
import Foundation
import TetherSDK

/// A conversation: with one user (1:1) or in a room.
public enum ConversationID: Hashable, Codable, Sendable, CustomStringConvertible {
    case user(String)
    case room(String)

    /// The SDK target messages of this conversation are sent to.
    public var target: Target {
        switch self {
        case let .user(id): return .user(id: id)
        case let .room(id): return .room(id: id)
        }
    }

    /// The user or room id.
    public var name: String {
        switch self {
        case let .user(id): return id
        case let .room(id): return id
        }
    }

    public var isRoom: Bool {
        if case .room = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case let .user(id): return "user:\(id)"
        case let .room(id): return "room:\(id)"
        }
    }
}

/// Where one of the user's own messages is on its way to the server.
public enum DeliveryState: Hashable, Codable, Sendable {
    /// In the SDK's outbox: not yet durable on the server.
    case pending
    /// Durable on the server (the SDK got its `send_ack`).
    case acknowledged
    /// Refused for good (the reason, from the server).
    case failed(String)
    /// Someone else's message, as received.
    case received
}

/// One line of a chat screen.
public struct ChatMessage: Hashable, Codable, Sendable, Identifiable {
    public enum Kind: String, Hashable, Codable, Sendable {
        /// A message someone sent.
        case message
        /// A line about the room: someone entered or quit, older messages are gone.
        case notice
    }

    /// Unique within its conversation: `"<from>/<client_msg_id>"` for messages, a local id for
    /// notices.
    public var id: String
    public var conversation: ConversationID
    public var kind: Kind
    /// The sender (for a notice: whom it is about).
    public var from: String
    /// The sender's id for the message (`client_msg_id`); empty for notices.
    public var clientMsgId: String
    public var text: String
    /// Server time in ms since the Unix epoch; the local send time while pending.
    public var timeMs: UInt64
    /// Server-wide message id, once known.
    public var msgId: UInt64?
    /// Seq in the room's log (room messages), or in the inbox the message reached this device
    /// through (1:1); nil while pending and for notices.
    public var seq: UInt64?
    public var delivery: DeliveryState

    public init(
        id: String, conversation: ConversationID, kind: Kind = .message, from: String, clientMsgId: String = "",
        text: String, timeMs: UInt64, msgId: UInt64? = nil, seq: UInt64? = nil, delivery: DeliveryState
    ) {
        self.id = id
        self.conversation = conversation
        self.kind = kind
        self.from = from
        self.clientMsgId = clientMsgId
        self.text = text
        self.timeMs = timeMs
        self.msgId = msgId
        self.seq = seq
        self.delivery = delivery
    }

    /// The id a message of `from` with `clientMsgId` gets.
    public static func messageID(from: String, clientMsgId: String) -> String {
        "\(from)/\(clientMsgId)"
    }
}

/// What the app knows of a room it is in.
public struct RoomInfo: Hashable, Codable, Sendable {
    /// The room's head when this device joined: messages up to it are history.
    public var headAtJoin: UInt64
    /// The join was answered on this device (`headAtJoin` is the room's head then).
    public var headKnown: Bool
    /// Highest room seq this screen has seen (live, history or an acknowledgement).
    public var highestSeq: UInt64
    /// Messages below this seq are history from a fetch of older messages (0: none asked).
    public var historyBelow: UInt64
    /// The oldest seq the node still keeps, when a fetch reported part of the history gone.
    public var firstAvailableSeq: UInt64?
    public var members: UInt64
    public var online: UInt64
    /// The user left the room (or it was deleted): no more messages.
    public var left: Bool

    public init(headAtJoin: UInt64 = 0, headKnown: Bool = false, highestSeq: UInt64 = 0, historyBelow: UInt64 = 0,
                firstAvailableSeq: UInt64? = nil, members: UInt64 = 0, online: UInt64 = 0, left: Bool = false) {
        self.headAtJoin = headAtJoin
        self.headKnown = headKnown
        self.highestSeq = highestSeq
        self.historyBelow = historyBelow
        self.firstAvailableSeq = firstAvailableSeq
        self.members = members
        self.online = online
        self.left = left
    }
}

/// A user's presence as the dot next to their name shows it.
public enum PresenceStatus: Hashable, Codable, Sendable {
    /// Not known yet (no answer to the subscription).
    case unknown
    case online
    /// Offline; last seen at this time (ms since the Unix epoch), when known.
    case offline(lastSeenMs: UInt64?)
}

/// One conversation of the list, with its own state.
public struct Conversation: Hashable, Codable, Sendable {
    public var id: ConversationID
    /// Messages not seen yet (0 while the conversation is open).
    public var unread: Int
    /// When it was created locally (ms): orders conversations that have no message yet.
    public var createdMs: UInt64
    /// The room's counts and history bounds (rooms only).
    public var room: RoomInfo?

    public init(id: ConversationID, unread: Int = 0, createdMs: UInt64, room: RoomInfo? = nil) {
        self.id = id
        self.unread = unread
        self.createdMs = createdMs
        self.room = room
    }
}
