// The SwiftUI app: the scene, and the scene phase forwarded to the SDK (background -> pause(),
// active -> resume(), through the core's LifecycleGate).
import SwiftUI
import TetherDemoCore

@main
struct TetherDemoApp: App {
    @StateObject private var model = AppModel()
    @Environment(\.scenePhase) private var scenePhase

    var body: some Scene {
        WindowGroup {
            RootView()
                .environmentObject(model)
        }
        .onChange(of: scenePhase) { phase in
            model.scenePhaseChanged(phase)
        }
    }
}

/// Sign-in until there is an account; then the banner over the conversations.
struct RootView: View {
    @EnvironmentObject private var model: AppModel

    var body: some View {
        if model.signedIn {
            VStack(spacing: 0) {
                ConnectionBannerView(banner: model.screen.banner, kickMessage: model.screen.kickMessage) {
                    Task { await model.signOut() }
                }
                NavigationStack(path: $model.path) {
                    ConversationListView()
                        .navigationDestination(for: ConversationID.self) { id in
                            ChatView(id: id)
                        }
                }
            }
            .alert("Tether", isPresented: alertShown) {
                Button("OK", role: .cancel) { model.dismissAlert() }
            } message: {
                Text(model.screen.alert ?? "")
            }
        } else {
            SignInView()
        }
    }

    private var alertShown: Binding<Bool> {
        Binding(
            get: { model.screen.alert != nil },
            set: { shown in if !shown { model.dismissAlert() } }
        )
    }
}
