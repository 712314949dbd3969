// A chat: the lines of one conversation (messages with their delivery state, enter/quit lines),
// older room history on demand, the online count or the other user's presence, and sending.
import SwiftUI
import TetherDemoCore

extension ConversationID {
    /// The room id, for a room.
    var roomID: String? {
        if case let .room(room) = self { return room }
        return nil
    }

    /// The other user, for a 1:1 conversation.
    var userID: String? {
        if case let .user(user) = self { return user }
        return nil
    }
}

struct ChatView: View {
    @EnvironmentObject private var model: AppModel
    let id: ConversationID
    @State private var draft = ""

    var body: some View {
        let lines = model.screen.lines(id)
        VStack(spacing: 0) {
            ScrollViewReader { proxy in
                ScrollView {
                    LazyVStack(spacing: 6) {
                        if let room = id.roomID, model.screen.canLoadOlder(room: room) {
                            Button("Load earlier messages") { model.loadOlder(room: room) }
                                .font(.footnote)
                                .padding(.top, 8)
                        }
                        ForEach(lines) { line in
                            MessageRow(line: line, mine: line.isMine(model.screen.me), showSender: id.isRoom)
                                .id(line.id)
                                .contextMenu {
                                    if line.isOwnOutgoing && line.delivery == .pending {
                                        Button("Cancel sending", role: .destructive) { model.cancel(line) }
                                    }
                                }
                        }
                    }
                    .padding(.horizontal)
                    .padding(.bottom, 8)
                }
                .onChange(of: lines.last?.id) { last in
                    if let last = last {
                        withAnimation { proxy.scrollTo(last, anchor: .bottom) }
                    }
                }
                .onAppear {
                    if let last = lines.last?.id { proxy.scrollTo(last, anchor: .bottom) }
                }
            }
            Divider()
            composer
        }
        .navigationBarTitleDisplayMode(.inline)
        .toolbar {
            ToolbarItem(placement: .principal) { header }
            if let room = id.roomID, model.screen.conversations[id]?.room?.left == false {
                ToolbarItem(placement: .navigationBarTrailing) {
                    Menu {
                        Button("Leave room", role: .destructive) { model.leave(room: room) }
                    } label: {
                        Image(systemName: "ellipsis.circle")
                    }
                }
            }
        }
        .onAppear { model.open(id) }
        .onDisappear { model.close(id) }
    }

    private var composer: some View {
        HStack(alignment: .bottom, spacing: 8) {
            TextField("Message", text: $draft, axis: .vertical)
                .lineLimit(1...5)
                .textFieldStyle(.roundedBorder)
            Button {
                let text = draft
                draft = ""
                model.send(text, to: id)
            } label: {
                Image(systemName: "paperplane.fill").font(.title3)
            }
            .disabled(draft.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty || left)
        }
        .padding(8)
    }

    private var left: Bool {
        model.screen.conversations[id]?.room?.left ?? false
    }

    private var header: some View {
        VStack(spacing: 0) {
            HStack(spacing: 6) {
                if let user = id.userID {
                    PresenceDot(status: model.screen.presence[user] ?? .unknown)
                }
                Text(id.isRoom ? "#\(id.name)" : id.name).font(.headline)
            }
            if let subtitle = subtitle {
                Text(subtitle).font(.caption2).foregroundColor(.secondary)
            }
        }
    }

    private var subtitle: String? {
        if let room = model.screen.conversations[id]?.room {
            return Format.roomCounts(room)
        }
        if let user = id.userID {
            let text = Format.presence(model.screen.presence[user] ?? .unknown, now: Date())
            return text.isEmpty ? nil : text
        }
        return nil
    }
}

struct MessageRow: View {
    let line: ChatMessage
    let mine: Bool
    let showSender: Bool

    var body: some View {
        if line.kind == .notice {
            Text(line.text)
                .font(.caption)
                .foregroundColor(.secondary)
                .frame(maxWidth: .infinity)
                .padding(.vertical, 2)
        } else {
            HStack {
                if mine { Spacer(minLength: 48) }
                VStack(alignment: mine ? .trailing : .leading, spacing: 2) {
                    if showSender && !mine {
                        Text(line.from).font(.caption2.bold()).foregroundColor(.secondary)
                    }
                    Text(line.text)
                        .padding(.horizontal, 12)
                        .padding(.vertical, 8)
                        .background(RoundedRectangle(cornerRadius: 16).fill(mine ? Color.accentColor : Color.gray.opacity(0.2)))
                        .foregroundColor(mine ? .white : .primary)
                    HStack(spacing: 4) {
                        Text(Format.messageTime(line.timeMs))
                        if mine {
                            DeliveryIcon(state: line.delivery)
                            Text(Format.delivery(line.delivery))
                        }
                    }
                    .font(.caption2)
                    .foregroundColor(.secondary)
                }
                if !mine { Spacer(minLength: 48) }
            }
        }
    }
}
