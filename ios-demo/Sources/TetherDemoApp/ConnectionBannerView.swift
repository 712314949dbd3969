// The connection banner (connecting, online, offline with the next retry, paused, kicked) and
// the presence dot. Their words come from the core's Format.
import SwiftUI
import TetherDemoCore

struct ConnectionBannerView: View {
    let banner: Banner
    let kickMessage: String?
    /// Shown as "Sign in again" when the session is over (kicked, refused, signed out).
    let onSignInAgain: () -> Void

    var body: some View {
        // Ticks every second so that "Retrying in 3 s" counts down.
        TimelineView(.periodic(from: .now, by: 1)) { context in
            let text = Format.banner(banner, nowMs: UInt64(context.date.timeIntervalSince1970 * 1000), kickMessage: kickMessage)
            HStack(spacing: 8) {
                Circle()
                    .fill(ConnectionBannerView.color(text.tone))
                    .frame(width: 8, height: 8)
                VStack(alignment: .leading, spacing: 1) {
                    Text(text.title).font(.subheadline.weight(.semibold))
                    if let detail = text.detail {
                        Text(detail).font(.caption)
                    }
                }
                Spacer()
                if banner.needsSignIn {
                    Button("Sign in again", action: onSignInAgain)
                        .font(.caption.weight(.semibold))
                }
            }
            .padding(.horizontal)
            .padding(.vertical, banner.isOnline ? 3 : 8)
            .frame(maxWidth: .infinity)
            .background(ConnectionBannerView.color(text.tone).opacity(0.15))
            .accessibilityElement(children: .combine)
        }
    }

    static func color(_ tone: BannerText.Tone) -> Color {
        switch tone {
        case .ok: return .green
        case .info: return .blue
        case .warning: return .orange
        case .error: return .red
        }
    }
}

struct PresenceDot: View {
    let status: PresenceStatus

    var body: some View {
        Circle()
            .fill(fill)
            .frame(width: 10, height: 10)
            .accessibilityLabel(label)
    }

    private var fill: Color {
        switch status {
        case .online: return .green
        case .offline: return .gray
        case .unknown: return Color.gray.opacity(0.25)
        }
    }

    private var label: String {
        switch status {
        case .online: return "online"
        case .offline: return "offline"
        case .unknown: return "presence unknown"
        }
    }
}

struct DeliveryIcon: View {
    let state: DeliveryState

    var body: some View {
        switch state {
        case .pending:
            Image(systemName: "clock").accessibilityLabel("sending")
        case .acknowledged:
            Image(systemName: "checkmark").accessibilityLabel("sent")
        case .failed:
            Image(systemName: "exclamationmark.circle").foregroundColor(.red).accessibilityLabel("not sent")
        case .received:
            EmptyView()
        }
    }
}
