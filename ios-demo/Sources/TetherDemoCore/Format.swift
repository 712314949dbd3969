// Formatting of times, delivery states, presence and the connection banner: the words and
// numbers the screens show, computed off the UI so that they are tested off-device.
import Foundation
import TetherSDK

/// How a banner looks: its words and its tone.
public struct BannerText: Hashable, Sendable {
    public enum Tone: String, Hashable, Sendable {
        /// Working on it (connecting, paused).
        case info
        /// All good (online).
        case ok
        /// Offline, retrying.
        case warning
        /// Needs the user (kicked, refused, signed out).
        case error
    }

    public var title: String
    public var detail: String?
    public var tone: Tone

    public init(title: String, detail: String? = nil, tone: Tone) {
        self.title = title
        self.detail = detail
        self.tone = tone
    }
}

public enum Format {
    // MARK: Messages

    /// A payload as text: UTF-8 text as it is, anything else as a short description.
    public static func payloadText(contentType: String, payload: Data) -> String {
        if contentType.hasPrefix("text/"), let text = String(data: payload, encoding: .utf8) {
            return text
        }
        return "[\(contentType), \(byteCount(payload.count))]"
    }

    /// `512 bytes`, `1.5 KB`, `3.2 MB`.
    public static func byteCount(_ n: Int) -> String {
        if n < 1024 { return "\(n) bytes" }
        let kb = Double(n) / 1024
        if kb < 1024 { return String(format: "%.1f KB", kb) }
        return String(format: "%.1f MB", kb / 1024)
    }

    /// The one-line preview of a conversation's last message in the list.
    public static func preview(_ message: ChatMessage, me: String?, isRoom: Bool, limit: Int = 80) -> String {
        let flat = message.text.split(whereSeparator: { $0.isNewline }).joined(separator: " ")
        let text = flat.count > limit ? String(flat.prefix(limit - 1)) + "…" : flat
        if message.isMine(me) { return "You: \(text)" }
        return isRoom ? "\(message.from): \(text)" : text
    }

    /// What the small line under one of the user's own messages says.
    public static func delivery(_ state: DeliveryState) -> String {
        switch state {
        case .pending: return "Sending…"
        case .acknowledged: return "Sent"
        case let .failed(reason): return "Not sent: \(reason)"
        case .received: return ""
        }
    }

    // MARK: Times

    /// A message time in the list: the time of day today, `Yesterday`, the weekday within the
    /// last week, else the date.
    public static func listTime(_ ms: UInt64, now: Date, calendar: Calendar = .current, locale: Locale = .current) -> String {
        let date = Date(timeIntervalSince1970: TimeInterval(ms) / 1000)
        let today = calendar.startOfDay(for: now)
        let day = calendar.startOfDay(for: date)
        let days = calendar.dateComponents([.day], from: day, to: today).day ?? 0
        if days <= 0 { return formatted(date, template: "jm", calendar: calendar, locale: locale) }
        if days == 1 { return "Yesterday" }
        if days < 7 { return formatted(date, template: "EEEE", calendar: calendar, locale: locale) }
        return formatted(date, template: "yMMMd", calendar: calendar, locale: locale)
    }

    /// A message time in the chat: the time of day.
    public static func messageTime(_ ms: UInt64, calendar: Calendar = .current, locale: Locale = .current) -> String {
        formatted(Date(timeIntervalSince1970: TimeInterval(ms) / 1000), template: "jm", calendar: calendar, locale: locale)
    }

    static func formatted(_ date: Date, template: String, calendar: Calendar, locale: Locale) -> String {
        let formatter = DateFormatter()
        formatter.calendar = calendar
        formatter.locale = locale
        formatter.timeZone = calendar.timeZone
        formatter.setLocalizedDateFormatFromTemplate(template)
        return formatter.string(from: date)
    }

    /// `in 3 s`, `in 2 min`, `now`: a wait until `targetMs`.
    public static func countdown(to targetMs: UInt64, nowMs: UInt64) -> String {
        guard targetMs > nowMs else { return "now" }
        let seconds = (targetMs - nowMs + 999) / 1000
        if seconds < 60 { return "in \(seconds) s" }
        return "in \((seconds + 59) / 60) min"
    }

    // MARK: Presence and rooms

    /// The words next to a presence dot.
    public static func presence(_ status: PresenceStatus, now: Date, calendar: Calendar = .current, locale: Locale = .current) -> String {
        switch status {
        case .unknown: return ""
        case .online: return "online"
        case let .offline(lastSeen):
            guard let ms = lastSeen else { return "offline" }
            return "last seen \(listTime(ms, now: now, calendar: calendar, locale: locale))"
        }
    }

    /// `3 members, 2 online`.
    public static func roomCounts(_ room: RoomInfo) -> String {
        if room.left { return "You left this room" }
        let members = room.members == 1 ? "1 member" : "\(room.members) members"
        return "\(members), \(room.online) online"
    }

    // MARK: The banner

    /// The banner's words at `nowMs` (the countdown of a backoff moves with the time).
    public static func banner(_ banner: Banner, nowMs: UInt64, kickMessage: String? = nil) -> BannerText {
        switch banner {
        case .connecting:
            return BannerText(title: "Connecting…", tone: .info)
        case .online:
            return BannerText(title: "Online", tone: .ok)
        case let .backingOff(attempt, retryAtMs):
            let tries = attempt <= 1 ? "" : " (attempt \(attempt + 1))"
            return BannerText(title: "Offline", detail: "Retrying \(countdown(to: retryAtMs, nowMs: nowMs))\(tries)", tone: .warning)
        case .paused:
            return BannerText(title: "Paused", detail: "Reconnects when the app is back in front", tone: .info)
        case let .kicked(reason):
            let title: String
            switch reason {
            case .replaced: title = "Signed in on another device"
            case .admin: title = "Signed out by the service"
            case .other: title = "Signed out by the server"
            }
            return BannerText(title: title, detail: kickMessage ?? "Sign in again to continue", tone: .error)
        case let .refused(code):
            return BannerText(title: "Sign-in refused", detail: refusal(code), tone: .error)
        case .signedOut:
            return BannerText(title: "Signed out", tone: .error)
        }
    }

    /// Why a credential was refused, in words.
    public static func refusal(_ code: ErrorCode) -> String {
        switch code {
        case .tokenExpired: return "The token has expired"
        case .invalidToken, .badSignature: return "The token is not valid for this server"
        case .ticketInvalid, .ticketExpired: return "The ticket is unknown, used up or expired"
        case .unsupportedVersion: return "This app is too old for the server"
        default: return "Refused (\(code))"
        }
    }
}
