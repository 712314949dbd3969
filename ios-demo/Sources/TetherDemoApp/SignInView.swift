// Sign-in: a node address or a registry URL, a ticket or a token, and for a development node
// its certificate (a path the simulator can read, or the pasted PEM).
import SwiftUI
import TetherDemoCore

struct SignInView: View {
    enum KindChoice: String, CaseIterable, Identifiable {
        case automatic, ticket, token
        var id: String { rawValue }
        var label: String {
            switch self {
            case .automatic: return "Auto"
            case .ticket: return "Ticket"
            case .token: return "JWT"
            }
        }
        var kind: CredentialKind? {
            switch self {
            case .automatic: return nil
            case .ticket: return .ticket
            case .token: return .token
            }
        }
    }

    @EnvironmentObject private var model: AppModel
    @AppStorage("signIn.endpoint") private var endpoint = "127.0.0.1:7443"
    @AppStorage("signIn.certificate") private var certificate = ""
    @State private var secret = ""
    @State private var kind = KindChoice.automatic

    var body: some View {
        NavigationStack {
            Form {
                Section {
                    TextField("host:port or http://host:7080/eureka/", text: $endpoint)
                        .keyboardType(.URL)
                        .textInputAutocapitalization(.never)
                        .autocorrectionDisabled()
                } header: {
                    Text("Node or registry")
                } footer: {
                    Text("A node started with ./scripts/run-node listens on port 7443; its registry is http://HOST:7080/eureka/.")
                }
                Section {
                    TextField("tk_… or a JWT", text: $secret, axis: .vertical)
                        .lineLimit(1...4)
                        .textInputAutocapitalization(.never)
                        .autocorrectionDisabled()
                    Picker("Kind", selection: $kind) {
                        ForEach(KindChoice.allCases) { choice in
                            Text(choice.label).tag(choice)
                        }
                    }
                    .pickerStyle(.segmented)
                } header: {
                    Text("Ticket or token")
                } footer: {
                    Text("A ticket comes from the admin API (POST /v1/tickets); a JWT from your backend.")
                }
                Section {
                    TextField("path to dev-cert.pem, or paste the PEM", text: $certificate, axis: .vertical)
                        .lineLimit(1...6)
                        .textInputAutocapitalization(.never)
                        .autocorrectionDisabled()
                } header: {
                    Text("Development certificate")
                } footer: {
                    Text("Leave empty for a node whose certificate the device trusts.")
                }
                Section {
                    Button {
                        Task { @MainActor in
                            await model.signIn(endpoint: endpoint, secret: secret, kind: kind.kind, certificate: certificate)
                        }
                    } label: {
                        if model.signingIn {
                            ProgressView()
                        } else {
                            Text("Sign in").bold()
                        }
                    }
                    .disabled(model.signingIn)
                }
                if let error = model.signInError {
                    Section {
                        Text(error).foregroundColor(.red)
                    }
                }
            }
            .navigationTitle("Tether Demo")
        }
    }
}
