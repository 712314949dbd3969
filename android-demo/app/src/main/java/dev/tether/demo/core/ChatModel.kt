// From SDK events to screen state: conversations, unread counts, message states, room counts
// and lines, presence, the connection banner. Plain Kotlin, no Android imports, no threads:
// TetherStore calls it under its lock.
package dev.tether.demo.core

import java.time.ZoneId
import uniffi.tether_ffi.ConnectionState
import uniffi.tether_ffi.Event
import uniffi.tether_ffi.Message
import uniffi.tether_ffi.PendingMessage
import uniffi.tether_ffi.RoomEventKind
import uniffi.tether_ffi.RoomJoined
import uniffi.tether_ffi.SendAck
import uniffi.tether_ffi.Target

/** What the display cache keeps of one conversation. */
data class CachedConversation(
    val id: ConversationId,
    val unread: Int,
    val activity: Long,
    val maxSeq: Long,
    val floor: Long,
    val members: Long?,
    val online: Long?,
    val messages: List<CachedMessage>,
)

/** What the display cache keeps. */
data class CacheSnapshot(val user: String?, val tick: Long, val conversations: List<CachedConversation>)

private class Conversation(val id: ConversationId) {
    val messages = ArrayList<CachedMessage>()
    val lines = ArrayList<InfoLine>()
    var unread = 0

    /** Orders the list: bumped by news in the conversation (newest first). */
    var activity = 0L

    /** The highest seq received (or the room's head at join): a message above it is news. */
    var maxSeq = 0L

    /** The lowest seq the server still keeps (rooms; moved up by history_truncated). */
    var floor = 1L
    var members: Long? = null
    var online: Long? = null

    /** A history page is being fetched down to this seq. */
    var historyTarget: Long? = null

    fun sorted(): List<CachedMessage> = messages.sortedWith(compareBy { it.seq ?: Long.MAX_VALUE })

    /** The lowest seq held (or the one after the head when none is held). */
    fun lowest(): Long = messages.mapNotNull { it.seq }.minOrNull() ?: (maxSeq + 1)

    fun finishHistory() {
        val target = historyTarget ?: return
        if (lowest() <= maxOf(target, floor)) historyTarget = null
    }
}

private data class InfoLine(val text: String, val afterSeq: Long, val order: Long)

private data class PresenceInfo(val online: Boolean, val lastSeenMs: Long)

class ChatModel(private val pageSize: Int = 20, private val cacheLimit: Int = 200) {
    /** The signed-in user (from LoggedIn; before it, from the cache or the token). */
    var me: String? = null
        private set
    var connection: ConnectionState = ConnectionState.Idle
        private set
    private var retryAtMs: Long? = null
    private var kickDetail: String? = null
    private var authDetail: String? = null
    var openId: ConversationId? = null
        private set
    var notice: String? = null
    private val convs = LinkedHashMap<ConversationId, Conversation>()
    private val byClientId = HashMap<String, ConversationId>()
    private val earlyAcks = HashMap<String, SendAck>()
    private val presence = HashMap<String, PresenceInfo>()
    private var tick = 0L
    private var lineOrder = 0L

    /** Starts again from the display cache. */
    fun restore(s: CacheSnapshot) {
        reset()
        me = s.user
        tick = s.tick
        for (cc in s.conversations) {
            val c = Conversation(cc.id)
            c.unread = cc.unread
            c.activity = cc.activity
            c.maxSeq = cc.maxSeq
            c.floor = cc.floor
            c.members = cc.members
            c.online = cc.online
            c.messages += cc.messages
            cc.messages.forEach { if (it.mine) byClientId[it.clientMsgId] = cc.id }
            convs[cc.id] = c
        }
    }

    fun snapshot(): CacheSnapshot = CacheSnapshot(
        me,
        tick,
        convs.values.map { c ->
            CachedConversation(c.id, c.unread, c.activity, c.maxSeq, c.floor, c.members, c.online, c.sorted().takeLast(cacheLimit))
        },
    )

    /** The user is known before the server says so (a token's subject, the cache). */
    fun assumeUser(user: String) {
        if (me == null) me = user
    }

    /** The 1:1 peers, for presence subscriptions. */
    fun directPeers(): List<String> = convs.keys.filterIsInstance<ConversationId.Direct>().map { it.user }

    fun hasConversation(id: ConversationId): Boolean = convs.containsKey(id)

    fun apply(e: Event, nowMs: Long) {
        when (e) {
            is Event.Message -> onMessage(e.message)
            is Event.State -> {
                connection = e.state
                val s = e.state
                retryAtMs = if (s is ConnectionState.Backoff) nowMs + s.retryInMs.toLong() else null
                if (s == ConnectionState.Online) {
                    kickDetail = null
                    authDetail = null
                }
            }
            is Event.LoggedIn -> {
                if (me != null && me != e.user) clear() // another account: its display cache goes
                me = e.user
            }
            is Event.SendAcked -> onAck(e.ack)
            is Event.SendFailed -> update(e.clientMsgId) { it.copy(delivery = Delivery.FAILED, error = Format.errorCode(e.code)) }
            is Event.SendCancelled -> remove(e.clientMsgId)
            is Event.Kicked -> kickDetail = Format.kickReason(e.reason)
            is Event.LoginFailed -> authDetail = Format.errorCode(e.code)
            is Event.StorageError -> notice = "Local storage problem: ${e.message}"
            is Event.RoomJoined -> onJoined(e.joined)
            is Event.RoomJoinFailed -> {
                notice = "Could not join #${e.room}: ${Format.errorCode(e.code)}"
                val id = ConversationId.Room(e.room)
                if (convs[id]?.messages?.isEmpty() == true) drop(id)
            }
            is Event.RoomLeft -> drop(ConversationId.Room(e.room))
            is Event.RoomEvent -> onRoomEvent(e.event)
            is Event.Presence -> presence[e.presence.user] = PresenceInfo(e.presence.online, e.presence.lastSeenMs.toLong())
            is Event.HistoryTruncated -> {
                val c = convs[ConversationId.Room(e.room)] ?: return
                val first = e.firstSeq.toLong()
                if (first > c.floor) {
                    c.floor = first
                    line(c, "Older messages are no longer kept")
                }
                c.finishHistory()
            }
        }
    }

    /** Forgets everything (sign-out). */
    fun reset() {
        clear()
        me = null
        connection = ConnectionState.Idle
        retryAtMs = null
        kickDetail = null
        authDetail = null
        notice = null
    }

    private fun clear() {
        convs.clear()
        byClientId.clear()
        earlyAcks.clear()
        presence.clear()
        openId = null
        tick = 0
    }

    private fun conv(id: ConversationId): Conversation = convs.getOrPut(id) { Conversation(id).also { it.activity = ++tick } }

    private fun drop(id: ConversationId) {
        val c = convs.remove(id) ?: return
        c.messages.forEach { byClientId.remove(it.clientMsgId) }
        if (openId == id) openId = null
    }

    private fun line(c: Conversation, text: String) {
        c.lines += InfoLine(text, c.maxSeq, ++lineOrder)
        if (c.lines.size > 50) c.lines.removeAt(0)
    }

    private fun onMessage(m: Message) {
        val mine = me != null && m.from == me
        val id = when (val to = m.to) {
            is Target.Room -> ConversationId.Room(to.id)
            is Target.User -> ConversationId.Direct(if (mine) to.id else m.from)
        }
        val c = conv(id)
        val seq = m.seq.toLong()
        if (mine) {
            // One's own message from the store (history, another device's send that this one
            // holds already): the same message, now with its seq.
            val i = c.messages.indexOfFirst { it.mine && it.clientMsgId == m.clientMsgId }
            if (i >= 0) {
                c.messages[i] = c.messages[i].copy(seq = seq, ts = m.ts.toLong(), delivery = Delivery.ACKNOWLEDGED, error = null)
                c.finishHistory()
                return
            }
        }
        // A history page repeats what is held: each seq once.
        if (c.messages.any { it.seq == seq }) return
        c.messages += CachedMessage(
            clientMsgId = m.clientMsgId,
            from = m.from,
            mine = mine,
            text = Format.payloadText(m.contentType, m.payload),
            seq = seq,
            ts = m.ts.toLong(),
            delivery = if (mine) Delivery.ACKNOWLEDGED else Delivery.RECEIVED,
        )
        if (mine) byClientId[m.clientMsgId] = id
        if (seq > c.maxSeq) {
            c.maxSeq = seq
            c.activity = ++tick
            if (!mine && openId != id) c.unread++
        }
        c.finishHistory()
    }

    private fun onAck(ack: SendAck) {
        if (byClientId[ack.clientMsgId] == null) {
            // The ack overtook the app's record of the send (the listener runs on its own thread).
            earlyAcks[ack.clientMsgId] = ack
            return
        }
        update(ack.clientMsgId) { it.copy(seq = ack.seq.toLong(), ts = ack.ts.toLong(), delivery = Delivery.ACKNOWLEDGED, error = null) }
    }

    private fun update(clientMsgId: String, f: (CachedMessage) -> CachedMessage) {
        val c = convs[byClientId[clientMsgId] ?: return] ?: return
        val i = c.messages.indexOfFirst { it.mine && it.clientMsgId == clientMsgId }
        if (i >= 0) c.messages[i] = f(c.messages[i])
    }

    private fun remove(clientMsgId: String) {
        val c = convs[byClientId.remove(clientMsgId) ?: return] ?: return
        c.messages.removeAll { it.mine && it.clientMsgId == clientMsgId }
    }

    fun onJoined(j: RoomJoined) {
        val c = conv(ConversationId.Room(j.room))
        c.members = j.members.toLong()
        c.online = j.online.toLong()
        c.maxSeq = maxOf(c.maxSeq, j.head.toLong())
    }

    private fun onRoomEvent(ev: uniffi.tether_ffi.RoomEvent) {
        val id = ConversationId.Room(ev.room)
        if (ev.kind == RoomEventKind.QUIT && ev.user == me) {
            drop(id) // left on another device
            return
        }
        if (ev.kind == RoomEventKind.QUIT && !convs.containsKey(id)) return
        val c = conv(id)
        c.members = ev.members.toLong()
        c.online = ev.online.toLong()
        val who = if (ev.user == me) "You" else ev.user
        when (ev.kind) {
            RoomEventKind.ENTER -> line(c, "$who joined")
            RoomEventKind.QUIT -> line(c, "$who left")
            else -> {}
        }
    }

    /** The app queued a message (its SDK id is known). */
    fun addOutgoing(id: ConversationId, clientMsgId: String, text: String, nowMs: Long) {
        val c = conv(id)
        c.messages += CachedMessage(clientMsgId, me ?: "", true, text, null, nowMs, Delivery.PENDING)
        byClientId[clientMsgId] = id
        c.activity = ++tick
        earlyAcks.remove(clientMsgId)?.let { onAck(it) }
    }

    /**
     * The SDK's outbox at start: what it still holds is pending (listed even if the display cache
     * lost it); what the cache shows as pending and the SDK no longer holds was acknowledged
     * while the app was away.
     */
    fun mergeOutbox(pending: List<PendingMessage>) {
        val held = pending.map { it.clientMsgId }.toSet()
        for (c in convs.values) {
            for (i in c.messages.indices) {
                val m = c.messages[i]
                if (m.mine && m.delivery == Delivery.PENDING && m.clientMsgId !in held) {
                    c.messages[i] = m.copy(delivery = Delivery.ACKNOWLEDGED)
                }
            }
        }
        for (p in pending) {
            if (byClientId.containsKey(p.clientMsgId)) continue
            val id = when (val to = p.to) {
                is Target.Room -> ConversationId.Room(to.id)
                is Target.User -> ConversationId.Direct(to.id)
            }
            val c = conv(id)
            c.messages += CachedMessage(
                p.clientMsgId, me ?: "", true, Format.payloadText(p.contentType, p.payload), null,
                p.createdMs.toLong(), Delivery.PENDING,
            )
            byClientId[p.clientMsgId] = id
        }
    }

    /** Opens a conversation (creating it: a new 1:1, a room being joined); its unread count goes to 0. */
    fun open(id: ConversationId) {
        conv(id).unread = 0
        openId = id
    }

    fun close() {
        openId = null
    }

    /** The `after` for the next history page of the open room, or null when there is none to fetch. */
    fun startHistory(id: ConversationId.Room): Long? {
        val c = convs[id] ?: return null
        if (c.historyTarget != null) return null
        val lowest = c.lowest()
        val floor = maxOf(c.floor, 1L)
        if (lowest <= floor) return null
        val after = maxOf(floor - 1, lowest - 1 - pageSize, 0L)
        c.historyTarget = after + 1
        return after
    }

    /** A history fetch could not be asked for. */
    fun cancelHistory(id: ConversationId.Room) {
        convs[id]?.historyTarget = null
    }

    fun render(phase: SignInPhase, signInError: String?, lastForm: SignInForm?, nowMs: Long, zone: ZoneId): AppState {
        val banner = if (phase == SignInPhase.SIGNED_OUT) {
            Banner(BannerKind.SIGNED_OUT, "Signed out")
        } else {
            Format.banner(connection, retryAtMs, nowMs, kickDetail, authDetail)
        }
        val rows = convs.values
            .sortedWith(compareByDescending<Conversation> { it.activity }.thenBy { it.id.key })
            .map { c ->
                val last = c.sorted().lastOrNull()
                val isRoom = c.id is ConversationId.Room
                ConversationRow(
                    id = c.id,
                    title = c.id.title,
                    isRoom = isRoom,
                    lastMessage = last?.let { Format.preview(it, isRoom) },
                    lastTime = last?.let { Format.time(it.ts, nowMs, zone) } ?: "",
                    lastDelivery = last?.delivery,
                    unread = c.unread,
                    online = (c.id as? ConversationId.Direct)?.let { presence[it.user]?.online },
                    onlineCount = if (isRoom) c.online else null,
                )
            }
        val chat = openId?.let { id -> convs[id]?.let { chatScreen(it, nowMs, zone) } }
        return AppState(
            phase = phase,
            signInError = signInError,
            user = if (phase == SignInPhase.SIGNED_OUT) null else me,
            banner = banner,
            conversations = if (phase == SignInPhase.SIGNED_OUT) emptyList() else rows,
            chat = if (phase == SignInPhase.SIGNED_OUT) null else chat,
            notice = notice,
            lastForm = lastForm,
        )
    }

    private fun chatScreen(c: Conversation, nowMs: Long, zone: ZoneId): ChatScreen {
        val msgs = c.sorted()
        val lines = c.lines.sortedWith(compareBy<InfoLine> { it.afterSeq }.thenBy { it.order })
        // Messages in seq order (pending ones last), each info line after the messages it followed.
        val rows = ArrayList<ChatRow>(msgs.size + lines.size)
        var li = 0
        for (m in msgs) {
            val seq = m.seq ?: Long.MAX_VALUE
            while (li < lines.size && lines[li].afterSeq < seq) {
                rows += ChatRow.Line(lines[li].text, lines[li].order)
                li++
            }
            rows += ChatRow.Msg(m.clientMsgId, m.from, m.mine, m.text, Format.time(m.ts, nowMs, zone), m.delivery, Format.status(m), m.seq)
        }
        while (li < lines.size) {
            rows += ChatRow.Line(lines[li].text, lines[li].order)
            li++
        }
        val isRoom = c.id is ConversationId.Room
        val peer = (c.id as? ConversationId.Direct)?.let { presence[it.user] }
        val subtitle = when {
            isRoom -> Format.roomSubtitle(c.online, c.members)
            peer == null -> ""
            peer.online -> "online"
            else -> Format.lastSeen(peer.lastSeenMs, nowMs, zone)
        }
        val lowest = c.lowest()
        return ChatScreen(
            id = c.id,
            title = c.id.title,
            subtitle = subtitle,
            rows = rows,
            isRoom = isRoom,
            onlineCount = if (isRoom) c.online else null,
            members = if (isRoom) c.members else null,
            peerOnline = peer?.online,
            canLoadOlder = isRoom && c.historyTarget == null && lowest > maxOf(c.floor, 1L),
            loadingOlder = c.historyTarget != null,
        )
    }
}
