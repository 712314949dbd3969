// The demo's screen state: plain Kotlin, no Android imports (compiled and tested on the JVM by
// android-demo/scripts/core-test). The Compose screens only draw these values.
package dev.tether.demo.core

/** A conversation: 1:1 with a user, or a room. */
sealed class ConversationId {
    /** Stable key (cache files, Compose list keys). */
    abstract val key: String

    /** What the list and the chat's top bar show. */
    abstract val title: String

    data class Direct(val user: String) : ConversationId() {
        override val key: String get() = "u:$user"
        override val title: String get() = user
    }

    data class Room(val room: String) : ConversationId() {
        override val key: String get() = "r:$room"
        override val title: String get() = "#$room"
    }

    companion object {
        fun fromKey(key: String): ConversationId? = when {
            key.startsWith("u:") && key.length > 2 -> Direct(key.substring(2))
            key.startsWith("r:") && key.length > 2 -> Room(key.substring(2))
            else -> null
        }
    }
}

/** Where a message is: sent ones go PENDING -> ACKNOWLEDGED (or FAILED); others are RECEIVED. */
enum class Delivery { PENDING, ACKNOWLEDGED, FAILED, RECEIVED }

/** One message as the app keeps it for display (the SDK owns the outbox and the cursors). */
data class CachedMessage(
    val clientMsgId: String,
    val from: String,
    val mine: Boolean,
    val text: String,
    /** Inbox seq (1:1) or room seq; null while pending. */
    val seq: Long?,
    /** Server time once known, the local send time before. */
    val ts: Long,
    val delivery: Delivery,
    val error: String? = null,
)

enum class BannerKind { CONNECTING, ONLINE, BACKOFF, PAUSED, KICKED, AUTH_FAILED, SIGNED_OUT }

/** The connection banner. [text] is as of the state's publication; a ticking UI calls [textAt]. */
data class Banner(
    val kind: BannerKind,
    val text: String,
    /** BACKOFF: when the next attempt is due (ms since the epoch). */
    val retryAtMs: Long? = null,
    /** BACKOFF: attempts so far. */
    val attempt: Int = 0,
    /** KICKED / AUTH_FAILED: the detail. */
    val detail: String? = null,
) {
    fun textAt(nowMs: Long): String = Format.bannerText(this, nowMs)
}

/** One line of the conversation list. */
data class ConversationRow(
    val id: ConversationId,
    val title: String,
    val isRoom: Boolean,
    /** Preview of the newest message ("You: ..." for one's own), null when there is none. */
    val lastMessage: String?,
    val lastTime: String,
    val lastDelivery: Delivery?,
    val unread: Int,
    /** 1:1 presence dot: true online, false offline, null unknown. */
    val online: Boolean?,
    /** Rooms: members online. */
    val onlineCount: Long?,
)

/** One row of a chat: a message, or an info line (entered, left, history gone). */
sealed class ChatRow {
    abstract val key: String

    data class Msg(
        val clientMsgId: String,
        val from: String,
        val mine: Boolean,
        val text: String,
        val time: String,
        val delivery: Delivery,
        /** "Sending…", "Sent", "Not sent: ..."; empty for received messages. */
        val status: String,
        val seq: Long?,
    ) : ChatRow() {
        override val key: String get() = "m:$clientMsgId:$from"
    }

    data class Line(val text: String, val order: Long) : ChatRow() {
        override val key: String get() = "l:$order"
    }
}

/** The open chat. */
data class ChatScreen(
    val id: ConversationId,
    val title: String,
    /** Rooms: "2 online · 3 members"; 1:1: "online" / "last seen ..." / "". */
    val subtitle: String,
    val rows: List<ChatRow>,
    val isRoom: Boolean,
    val onlineCount: Long?,
    val members: Long?,
    val peerOnline: Boolean?,
    val canLoadOlder: Boolean,
    val loadingOlder: Boolean,
)

enum class SignInPhase { SIGNED_OUT, SIGNING_IN, SIGNED_IN }

/** Everything the screens show. */
data class AppState(
    val phase: SignInPhase,
    val signInError: String?,
    /** The signed-in user, once the server said who it is. */
    val user: String?,
    val banner: Banner,
    val conversations: List<ConversationRow>,
    val chat: ChatScreen?,
    /** A one-off message (a refused room join, a storage problem); cleared by [TetherStore.dismissNotice]. */
    val notice: String?,
    /** The form to prefill the sign-in screen with (the last one used). */
    val lastForm: SignInForm?,
) {
    fun row(id: ConversationId): ConversationRow? = conversations.firstOrNull { it.id == id }
}
