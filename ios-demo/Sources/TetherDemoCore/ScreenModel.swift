// The state every screen is drawn from, and how SDK events and the user's actions change it.
// A value type with pure mutating functions: the store (ChatStore) owns one and feeds it; the
// tests feed it synthetic events.
import Foundation
import TetherSDK

/// Everything the screens show.
public struct ScreenModel: Equatable, Sendable {
    /// The signed-in user, once known (from the JWT's `sub`, or the SDK's `loggedIn` event).
    public var me: String?
    public var banner: Banner
    /// The text of the SDK's `kicked` event, shown under the banner.
    public var kickMessage: String?
    public var conversations: [ConversationID: Conversation]
    /// Each conversation's lines in display order (oldest first).
    public var messages: [ConversationID: [ChatMessage]]
    /// Presence of the users the app subscribed to (everyone it has a 1:1 conversation with).
    public var presence: [String: PresenceStatus]
    /// The conversation on screen: its messages are read as they arrive.
    public var open: ConversationID?
    /// A problem to show once (a refused send, a failed join, a storage error).
    public var alert: String?
    /// Numbers the notices (enter/quit lines) so that each has its own id.
    public var noticeCounter: UInt64

    public init(me: String? = nil) {
        self.me = me
        banner = .connecting
        kickMessage = nil
        conversations = [:]
        messages = [:]
        presence = [:]
        self.open = nil
        alert = nil
        noticeCounter = 0
    }

    /// The users the app has a 1:1 conversation with (their presence is subscribed).
    public var userPeers: Set<String> {
        var peers = Set<String>()
        for id in conversations.keys {
            if case let .user(user) = id { peers.insert(user) }
        }
        return peers
    }

    /// Total unread messages (the app badge).
    public var totalUnread: Int {
        conversations.values.reduce(0) { $0 + $1.unread }
    }

    /// The lines of a conversation (empty if none).
    public func lines(_ id: ConversationID) -> [ChatMessage] {
        messages[id] ?? []
    }

    /// The message of the user's own with this `client_msg_id`, wherever it is.
    public func outgoing(_ clientMsgId: String) -> ChatMessage? {
        for list in messages.values {
            if let m = list.first(where: { $0.isOwnOutgoing && $0.clientMsgId == clientMsgId }) { return m }
        }
        return nil
    }
}

extension ChatMessage {
    /// Sent from this device (the local echo of a send).
    public var isOwnOutgoing: Bool {
        kind == .message && id.hasPrefix(ChatMessage.outgoingPrefix)
    }

    /// Sent by the user, from this device or another one.
    public func isMine(_ me: String?) -> Bool {
        kind == .message && (isOwnOutgoing || (me != nil && from == me))
    }

    static let outgoingPrefix = "out/"
    static let truncatedNoticeID = "notice/truncated"
}

// MARK: - SDK events

extension ScreenModel {
    /// Applies one SDK event received at `nowMs`.
    public mutating func apply(_ event: Event, nowMs: UInt64) {
        switch event {
        case let .message(message):
            receive(message, nowMs: nowMs)
        case let .state(state):
            banner = Banner(state, nowMs: nowMs)
            if banner == .online { kickMessage = nil }
        case let .loggedIn(user, _):
            me = user
        case let .sendAcked(ack):
            acknowledge(ack)
        case let .sendFailed(clientMsgId, code, message):
            let reason = message.isEmpty ? "\(code)" : message
            updateOutgoing(clientMsgId) { $0.delivery = .failed(reason) }
            alert = "Not sent: \(reason)"
        case let .sendCancelled(clientMsgId, _):
            removeOutgoing(clientMsgId)
        case let .kicked(reason, message):
            banner = .kicked(reason)
            kickMessage = message.isEmpty ? nil : message
        case let .loginFailed(code, message):
            banner = .refused(code)
            alert = message.isEmpty ? "Sign-in refused: \(code)" : "Sign-in refused: \(message)"
        case let .storageError(message):
            alert = "Storage problem: \(message)"
        case let .roomJoined(joined):
            roomJoined(joined, nowMs: nowMs)
        case let .roomJoinFailed(room, code, message):
            alert = "Could not join \(room): \(message.isEmpty ? "\(code)" : message)"
        case let .roomLeft(room):
            roomLeft(room, nowMs: nowMs)
        case let .roomEvent(roomEvent):
            apply(roomEvent, nowMs: nowMs)
        case let .presence(presence):
            self.presence[presence.user] =
                presence.online ? .online : .offline(lastSeenMs: presence.lastSeenMs == 0 ? nil : presence.lastSeenMs)
        case let .historyTruncated(room, _, firstSeq):
            historyTruncated(room: room, firstSeq: firstSeq, nowMs: nowMs)
        }
    }

    /// The conversation a message belongs to, as this user sees it.
    public func conversation(of message: Message) -> ConversationID {
        switch message.to {
        case let .room(id):
            return .room(id)
        case let .user(id):
            // To me: the conversation with the sender. From me (another device): with the
            // recipient. A message to oneself: the conversation with oneself.
            if let me = me {
                return message.from == me ? .user(id) : .user(message.from)
            }
            return .user(message.from)
        }
    }

    mutating func receive(_ message: Message, nowMs: UInt64) {
        let cid = conversation(of: message)
        ensureConversation(cid, nowMs: nowMs)
        var list = messages[cid] ?? []

        // The sender copy of one of this device's own messages (after a restart): it is the
        // acknowledgement, not a new line.
        if me != nil, message.from == me,
           let i = list.firstIndex(where: { $0.isOwnOutgoing && $0.clientMsgId == message.clientMsgId }) {
            list[i].delivery = .acknowledged
            list[i].msgId = message.msgId
            list[i].timeMs = message.ts
            if cid.isRoom { list[i].seq = message.seq }
            messages[cid] = list
            return
        }
        // Exactly once from the SDK, but a room history fetch repeats what is shown already,
        // and the display cache may hold what the SDK delivers again after a crash.
        let id = ChatMessage.messageID(from: message.from, clientMsgId: message.clientMsgId)
        func isSame(_ line: ChatMessage) -> Bool {
            guard line.kind == .message else { return false }
            if line.id == id || line.msgId == message.msgId { return true }
            return cid.isRoom && line.seq == message.seq
        }
        if list.contains(where: isSame) {
            return
        }

        let mine = me != nil && message.from == me
        let line = ChatMessage(
            id: id, conversation: cid, from: message.from, clientMsgId: message.clientMsgId,
            text: Format.payloadText(contentType: message.contentType, payload: message.payload),
            timeMs: message.ts, msgId: message.msgId, seq: message.seq,
            delivery: mine ? .acknowledged : .received
        )
        var history = false
        if cid.isRoom {
            // History: what was in the room before this device joined, what a fetch of older
            // messages asked for, and anything older than every message shown.
            let room = conversations[cid]?.room ?? RoomInfo()
            let lowest = list.compactMap { $0.kind == .message ? $0.seq : nil }.min()
            history = message.seq <= room.headAtJoin || message.seq < room.historyBelow
                || (lowest.map { message.seq < $0 } ?? false)
        }
        if history {
            // Older than everything shown: above it (below the "no longer available" line), in
            // seq order.
            let at = list.prefix(while: {
                $0.id == ChatMessage.truncatedNoticeID || ($0.kind == .message && ($0.seq ?? UInt64.max) < message.seq)
            }).count
            list.insert(line, at: at)
        } else {
            list.append(line)
        }
        messages[cid] = list

        if cid.isRoom, var conversation = conversations[cid] {
            var room = conversation.room ?? RoomInfo()
            room.highestSeq = max(room.highestSeq, message.seq)
            conversation.room = room
            conversations[cid] = conversation
        }
        if !history && !mine && self.open != cid {
            conversations[cid]?.unread += 1
        }
    }

    mutating func acknowledge(_ ack: SendAck) {
        var room: ConversationID?
        updateOutgoing(ack.clientMsgId) { m in
            m.delivery = .acknowledged
            m.msgId = ack.msgId
            m.seq = ack.seq
            m.timeMs = ack.ts
            if m.conversation.isRoom { room = m.conversation }
        }
        if let cid = room, var info = conversations[cid]?.room {
            info.highestSeq = max(info.highestSeq, ack.seq)
            conversations[cid]?.room = info
        }
    }

    mutating func updateOutgoing(_ clientMsgId: String, _ change: (inout ChatMessage) -> Void) {
        for (cid, list) in messages {
            if let i = list.firstIndex(where: { $0.isOwnOutgoing && $0.clientMsgId == clientMsgId }) {
                var copy = list
                change(&copy[i])
                messages[cid] = copy
                return
            }
        }
    }

    mutating func removeOutgoing(_ clientMsgId: String) {
        for (cid, list) in messages {
            if list.contains(where: { $0.isOwnOutgoing && $0.clientMsgId == clientMsgId }) {
                messages[cid] = list.filter { !($0.isOwnOutgoing && $0.clientMsgId == clientMsgId) }
                return
            }
        }
    }

    mutating func roomJoined(_ joined: RoomJoined, nowMs: UInt64) {
        let cid = ConversationID.room(joined.room)
        ensureConversation(cid, nowMs: nowMs)
        var room = conversations[cid]?.room ?? RoomInfo()
        if !room.headKnown || room.left {
            // A new member (or back in after leaving): what was said before is history. A
            // repeated join only refreshes the counts.
            room.headAtJoin = joined.head
            room.headKnown = true
            room.left = false
        }
        room.highestSeq = max(room.highestSeq, joined.head)
        room.members = joined.members
        room.online = joined.online
        conversations[cid]?.room = room
    }

    mutating func roomLeft(_ room: String, nowMs: UInt64) {
        let cid = ConversationID.room(room)
        guard conversations[cid]?.room?.left == false else { return }
        conversations[cid]?.room?.left = true
        addNotice(cid, about: me ?? "", text: "You left", nowMs: nowMs)
    }

    mutating func apply(_ event: RoomEvent, nowMs: UInt64) {
        let cid = ConversationID.room(event.room)
        let aboutMe = me != nil && event.user == me
        if conversations[cid] == nil {
            // A room joined on another device (or through the admin API): it is one of ours now.
            if event.kind == .quit && aboutMe { return }
            ensureConversation(cid, nowMs: nowMs)
        }
        var room = conversations[cid]?.room ?? RoomInfo()
        room.members = event.members
        room.online = event.online
        switch event.kind {
        case .enter:
            if aboutMe { room.left = false }
            conversations[cid]?.room = room
            addNotice(cid, about: event.user, text: aboutMe ? "You joined" : "\(event.user) joined", nowMs: nowMs)
        case .quit:
            let wasLeft = room.left
            if aboutMe { room.left = true }
            conversations[cid]?.room = room
            if !(aboutMe && wasLeft) {
                addNotice(cid, about: event.user, text: aboutMe ? "You left" : "\(event.user) left", nowMs: nowMs)
            }
        case .online, .offline, .other:
            conversations[cid]?.room = room
        }
    }

    mutating func historyTruncated(room: String, firstSeq: UInt64, nowMs: UInt64) {
        let cid = ConversationID.room(room)
        guard var info = conversations[cid]?.room else { return }
        if let known = info.firstAvailableSeq, known >= firstSeq { return }
        info.firstAvailableSeq = firstSeq
        conversations[cid]?.room = info
        let notice = ChatMessage(
            id: ChatMessage.truncatedNoticeID, conversation: cid, kind: .notice, from: "",
            text: "Older messages are no longer available", timeMs: nowMs, delivery: .received
        )
        var list = messages[cid] ?? []
        list.removeAll { $0.id == ChatMessage.truncatedNoticeID }
        list.insert(notice, at: 0)
        messages[cid] = list
    }

    mutating func addNotice(_ cid: ConversationID, about user: String, text: String, nowMs: UInt64) {
        noticeCounter += 1
        let notice = ChatMessage(
            id: "notice/\(noticeCounter)", conversation: cid, kind: .notice, from: user,
            text: text, timeMs: nowMs, delivery: .received
        )
        messages[cid, default: []].append(notice)
    }
}

// MARK: - The user's actions

extension ScreenModel {
    /// Makes sure the conversation is in the list (a new chat, a room joined).
    public mutating func ensureConversation(_ id: ConversationID, nowMs: UInt64) {
        if conversations[id] == nil {
            conversations[id] = Conversation(id: id, createdMs: nowMs, room: id.isRoom ? RoomInfo() : nil)
        }
    }

    /// The user opened a conversation: everything in it is read.
    public mutating func markOpened(_ id: ConversationID, nowMs: UInt64) {
        ensureConversation(id, nowMs: nowMs)
        self.open = id
        conversations[id]?.unread = 0
    }

    /// The user went back to the list.
    public mutating func closeConversation() {
        self.open = nil
    }

    /// The local echo of a message just handed to the SDK (state `pending`).
    @discardableResult
    public mutating func addOutgoing(clientMsgId: String, to id: ConversationID, text: String, nowMs: UInt64) -> ChatMessage {
        ensureConversation(id, nowMs: nowMs)
        let line = ChatMessage(
            id: ChatMessage.outgoingPrefix + clientMsgId, conversation: id, from: me ?? "",
            clientMsgId: clientMsgId, text: text, timeMs: nowMs, delivery: .pending
        )
        messages[id, default: []].append(line)
        return line
    }

    /// After a (re)start: the SDK's outbox is what is still on its way. Messages in it that
    /// the display cache does not show are shown again as pending; pending lines of the cache
    /// that are no longer in the outbox were acknowledged while the app was not listening.
    public mutating func restoreOutbox(_ outbox: [PendingMessage], nowMs: UInt64) {
        let waiting = Set(outbox.map { $0.clientMsgId })
        for (cid, list) in messages {
            var copy = list
            var changed = false
            for i in copy.indices where copy[i].isOwnOutgoing && copy[i].delivery == .pending {
                if !waiting.contains(copy[i].clientMsgId) {
                    copy[i].delivery = .acknowledged
                    changed = true
                }
            }
            if changed { messages[cid] = copy }
        }
        for pending in outbox where outgoing(pending.clientMsgId) == nil {
            let cid: ConversationID
            switch pending.to {
            case let .user(id): cid = .user(id)
            case let .room(id): cid = .room(id)
            }
            addOutgoing(
                clientMsgId: pending.clientMsgId, to: cid,
                text: Format.payloadText(contentType: pending.contentType, payload: pending.payload),
                nowMs: pending.createdMs == 0 ? nowMs : pending.createdMs
            )
        }
    }

    /// The user left a room (the server confirmed it).
    public mutating func markLeft(room: String, nowMs: UInt64) {
        roomLeft(room, nowMs: nowMs)
    }

    /// The user removed a conversation from the list.
    public mutating func remove(_ id: ConversationID) {
        conversations[id] = nil
        messages[id] = nil
        if self.open == id { self.open = nil }
    }

    // MARK: Room history

    /// The lowest room seq this screen has (or would have: the head at join plus one).
    public func oldestSeq(room: String) -> UInt64? {
        let cid = ConversationID.room(room)
        guard let info = conversations[cid]?.room else { return nil }
        let seqs = lines(cid).compactMap { $0.kind == .message ? $0.seq : nil }
        return seqs.min() ?? (info.headAtJoin + 1)
    }

    /// Whether older messages of the room can be fetched.
    public func canLoadOlder(room: String) -> Bool {
        guard let info = conversations[.room(room)]?.room, !info.left, let oldest = oldestSeq(room: room) else {
            return false
        }
        return oldest > max(1, info.firstAvailableSeq ?? 1)
    }

    /// The `after` of `sync_room` that fetches the next page of older messages (up to
    /// `pageSize` of them), or nil when there is nothing older.
    public func historyAfter(room: String, pageSize: UInt64) -> UInt64? {
        guard canLoadOlder(room: room), let oldest = oldestSeq(room: room) else { return nil }
        let floor = max(1, conversations[.room(room)]?.room?.firstAvailableSeq ?? 1) - 1
        let below = oldest - 1
        return below > pageSize ? max(floor, below - pageSize) : floor
    }

    /// Starts a fetch of older messages: returns the `after` for `sync_room` (nil when there
    /// is nothing older) and notes that what arrives below the oldest message shown is history.
    public mutating func requestOlder(room: String, pageSize: UInt64) -> UInt64? {
        guard let after = historyAfter(room: room, pageSize: pageSize), let oldest = oldestSeq(room: room) else {
            return nil
        }
        if var info = conversations[.room(room)]?.room {
            info.historyBelow = max(info.historyBelow, oldest)
            conversations[.room(room)]?.room = info
        }
        return after
    }
}
