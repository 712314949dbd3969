// The conversation list: 1:1 conversations and rooms, most recent first, with the last
// message, unread counts and presence dots (rows from the core's ConversationList).
import SwiftUI
import TetherDemoCore

enum NewConversationKind: String, Identifiable {
    case chat, room
    var id: String { rawValue }
}

struct ConversationListView: View {
    @EnvironmentObject private var model: AppModel
    @State private var composing: NewConversationKind?

    var body: some View {
        let rows = ConversationList.rows(model.screen)
        List {
            ForEach(rows) { row in
                NavigationLink(value: row.id) {
                    ConversationRowView(row: row)
                }
            }
            .onDelete { offsets in
                for index in offsets { model.remove(rows[index].id) }
            }
        }
        .listStyle(.plain)
        .overlay {
            if rows.isEmpty {
                VStack(spacing: 8) {
                    Text("No conversations yet").font(.headline)
                    Text("Start a chat with a user id, or join a room.").font(.subheadline).foregroundColor(.secondary)
                }
            }
        }
        .navigationTitle(model.screen.me ?? "Chats")
        .toolbar {
            ToolbarItem(placement: .navigationBarLeading) {
                Button("Sign out") {
                    Task { @MainActor in await model.signOut() }
                }
            }
            ToolbarItem(placement: .navigationBarTrailing) {
                Menu {
                    Button("New chat") { composing = .chat }
                    Button("Join a room") { composing = .room }
                } label: {
                    Image(systemName: "square.and.pencil")
                }
            }
        }
        .sheet(item: $composing) { kind in
            NewConversationView(kind: kind)
                .environmentObject(model)
        }
    }
}

struct ConversationRowView: View {
    let row: ConversationRow

    var body: some View {
        HStack(spacing: 12) {
            ZStack(alignment: .bottomTrailing) {
                Image(systemName: row.id.isRoom ? "number.circle.fill" : "person.crop.circle.fill")
                    .font(.system(size: 38))
                    .foregroundColor(.secondary)
                if let presence = row.presence {
                    PresenceDot(status: presence)
                }
            }
            VStack(alignment: .leading, spacing: 3) {
                HStack {
                    Text(row.title).font(.headline).lineLimit(1)
                    Spacer()
                    if let ms = row.lastTimeMs {
                        Text(Format.listTime(ms, now: Date())).font(.caption).foregroundColor(.secondary)
                    }
                }
                HStack(spacing: 4) {
                    if let delivery = row.lastDelivery {
                        DeliveryIcon(state: delivery).font(.caption).foregroundColor(.secondary)
                    }
                    Text(row.preview).font(.subheadline).foregroundColor(.secondary).lineLimit(1)
                    Spacer()
                    if row.unread > 0 {
                        Text("\(row.unread)")
                            .font(.caption.bold())
                            .foregroundColor(.white)
                            .padding(.horizontal, 7)
                            .padding(.vertical, 2)
                            .background(Capsule().fill(Color.accentColor))
                            .accessibilityLabel("\(row.unread) unread")
                    }
                }
                if let counts = row.roomCounts {
                    Text(counts).font(.caption2).foregroundColor(.secondary)
                }
            }
        }
        .padding(.vertical, 4)
    }
}

struct NewConversationView: View {
    @EnvironmentObject private var model: AppModel
    @Environment(\.dismiss) private var dismiss
    let kind: NewConversationKind
    @State private var name = ""
    @State private var error: String?
    @State private var working = false

    var body: some View {
        NavigationStack {
            Form {
                TextField(kind == .chat ? "User id" : "Room id", text: $name)
                    .textInputAutocapitalization(.never)
                    .autocorrectionDisabled()
                    .onSubmit(submit)
                if let error = error {
                    Text(error).font(.footnote).foregroundColor(.red)
                }
            }
            .navigationTitle(kind == .chat ? "New chat" : "Join a room")
            .navigationBarTitleDisplayMode(.inline)
            .toolbar {
                ToolbarItem(placement: .cancellationAction) {
                    Button("Cancel") { dismiss() }
                }
                ToolbarItem(placement: .confirmationAction) {
                    Button(kind == .chat ? "Start" : "Join", action: submit)
                        .disabled(working || name.trimmingCharacters(in: .whitespaces).isEmpty)
                }
            }
        }
    }

    private func submit() {
        working = true
        Task { @MainActor in
            defer { working = false }
            do {
                let id: ConversationID
                if kind == .chat {
                    id = try await model.startChat(with: name)
                } else {
                    id = try await model.joinRoom(name)
                }
                dismiss()
                model.path = [id]
            } catch {
                self.error = "\(error)"
            }
        }
    }
}
