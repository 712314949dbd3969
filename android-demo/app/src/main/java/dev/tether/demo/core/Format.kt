// Formatting of times, states and errors for the screens (plain Kotlin, no Android imports).
package dev.tether.demo.core

import java.time.Instant
import java.time.ZoneId
import java.time.format.TextStyle
import java.time.temporal.ChronoUnit
import java.util.Locale
import uniffi.tether_ffi.ConnectionState
import uniffi.tether_ffi.ErrorCode
import uniffi.tether_ffi.KickReason
import uniffi.tether_ffi.TetherException

object Format {
    /** A message time: "14:05" today, "Yesterday", "Tue" this week, "3 Mar" this year, else "3 Mar 2024". */
    fun time(ts: Long, nowMs: Long, zone: ZoneId): String {
        if (ts <= 0) return ""
        val t = Instant.ofEpochMilli(ts).atZone(zone)
        val n = Instant.ofEpochMilli(nowMs).atZone(zone)
        val days = ChronoUnit.DAYS.between(t.toLocalDate(), n.toLocalDate())
        val month = t.month.getDisplayName(TextStyle.SHORT, Locale.ENGLISH)
        return when {
            days <= 0 -> "%02d:%02d".format(t.hour, t.minute)
            days == 1L -> "Yesterday"
            days < 7 -> t.dayOfWeek.getDisplayName(TextStyle.SHORT, Locale.ENGLISH)
            t.year == n.year -> "${t.dayOfMonth} $month"
            else -> "${t.dayOfMonth} $month ${t.year}"
        }
    }

    /** "last seen just now", "last seen 5 min ago", "last seen 3 h ago", "last seen Tue". */
    fun lastSeen(ms: Long, nowMs: Long, zone: ZoneId): String {
        if (ms <= 0) return "offline"
        val ago = (nowMs - ms).coerceAtLeast(0) / 1000
        return when {
            ago < 60 -> "last seen just now"
            ago < 3600 -> "last seen ${ago / 60} min ago"
            ago < 12 * 3600 -> "last seen ${ago / 3600} h ago"
            else -> "last seen " + time(ms, nowMs, zone)
        }
    }

    /** The banner for a connection state (see [bannerText] for the wording). */
    fun banner(state: ConnectionState, retryAtMs: Long?, nowMs: Long, kickDetail: String?, authDetail: String?): Banner {
        val b = when (state) {
            ConnectionState.Idle, ConnectionState.Connecting, ConnectionState.LoggingIn -> Banner(BannerKind.CONNECTING, "")
            ConnectionState.Online -> Banner(BannerKind.ONLINE, "")
            is ConnectionState.Backoff -> Banner(BannerKind.BACKOFF, "", retryAtMs = retryAtMs, attempt = state.attempt.toInt())
            ConnectionState.Paused -> Banner(BannerKind.PAUSED, "")
            is ConnectionState.Kicked -> Banner(BannerKind.KICKED, "", detail = kickDetail ?: kickReason(state.reason))
            is ConnectionState.AuthFailed -> Banner(BannerKind.AUTH_FAILED, "", detail = authDetail ?: errorCode(state.code))
            ConnectionState.LoggedOut -> Banner(BannerKind.SIGNED_OUT, "")
        }
        return b.copy(text = bannerText(b, nowMs))
    }

    fun bannerText(b: Banner, nowMs: Long): String = when (b.kind) {
        BannerKind.CONNECTING -> "Connecting…"
        BannerKind.ONLINE -> "Online"
        BannerKind.BACKOFF -> {
            val left = b.retryAtMs?.let { ((it - nowMs).coerceAtLeast(0) + 999) / 1000 } ?: 0
            val retry = if (left <= 0) "retrying now" else "retrying in $left s"
            "Offline · $retry (attempt ${b.attempt})"
        }
        BannerKind.PAUSED -> "Paused in the background"
        BannerKind.KICKED -> "Disconnected: ${b.detail ?: "by the server"}. Sign in again."
        BannerKind.AUTH_FAILED -> "Sign-in refused: ${b.detail ?: "bad credential"}. Sign in again."
        BannerKind.SIGNED_OUT -> "Signed out"
    }

    fun kickReason(r: KickReason): String = when (r) {
        KickReason.REPLACED -> "signed in on another device of the same type"
        KickReason.ADMIN -> "removed by the service"
        KickReason.OTHER -> "by the server"
    }

    fun errorCode(c: ErrorCode): String = when (c) {
        ErrorCode.TOKEN_EXPIRED -> "the token has expired"
        ErrorCode.TICKET_INVALID -> "the ticket is not valid (tickets work once)"
        ErrorCode.TICKET_EXPIRED -> "the ticket has expired"
        ErrorCode.INVALID_TOKEN, ErrorCode.BAD_SIGNATURE -> "the token is not accepted"
        ErrorCode.NOT_A_MEMBER -> "not a member of the room"
        ErrorCode.NO_SUCH_ROOM -> "no such room"
        ErrorCode.RATE_LIMITED -> "too many messages, slow down"
        ErrorCode.FRAME_TOO_LARGE -> "the message is too large"
        ErrorCode.INVALID_FIELD -> "invalid input"
        ErrorCode.UNAVAILABLE -> "the service is unavailable"
        else -> c.name.lowercase().replace('_', ' ')
    }

    /** A failed SDK call, for the sign-in screen or a notice. */
    fun error(e: Throwable): String = when (e) {
        is TetherException.Refused -> errorCode(e.code) + if (e.detail.isNotBlank()) " (${e.detail})" else ""
        is TetherException.Network -> "cannot reach the server: ${e.detail}"
        is TetherException.Tls -> "TLS: ${e.detail}"
        is TetherException.Config -> "configuration: ${e.detail}"
        is TetherException.State -> "local state: ${e.detail}"
        is TetherException.NotOnline -> "not online: ${e.detail}"
        is TetherException.Closed -> "signed out"
        is TetherException.Cancelled -> "cancelled"
        else -> e.message ?: e.toString()
    }

    fun status(m: CachedMessage): String = when (m.delivery) {
        Delivery.PENDING -> "Sending…"
        Delivery.ACKNOWLEDGED -> "Sent"
        Delivery.FAILED -> "Not sent: ${m.error ?: "refused"}"
        Delivery.RECEIVED -> ""
    }

    /** The list's preview of a message. */
    fun preview(m: CachedMessage, isRoom: Boolean): String {
        val text = m.text.replace('\n', ' ').let { if (it.length > 80) it.take(79) + "…" else it }
        return when {
            m.mine -> "You: $text"
            isRoom -> "${m.from}: $text"
            else -> text
        }
    }

    /** The text of a payload: UTF-8 for text types, a placeholder for others. */
    fun payloadText(contentType: String, payload: ByteArray): String =
        if (contentType.startsWith("text/")) String(payload, Charsets.UTF_8)
        else "[$contentType, ${payload.size} bytes]"

    fun roomSubtitle(online: Long?, members: Long?): String = when {
        online == null && members == null -> ""
        members == null -> "$online online"
        online == null -> "$members members"
        else -> "$online online · $members " + if (members == 1L) "member" else "members"
    }
}
