// The Compose UI: it draws the core's AppState and calls the store; no logic of its own.
package dev.tether.demo.ui

import androidx.activity.compose.BackHandler
import androidx.compose.foundation.isSystemInDarkTheme
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.safeDrawingPadding
import androidx.compose.material3.AlertDialog
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.material3.darkColorScheme
import androidx.compose.material3.lightColorScheme
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberCoroutineScope
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.lifecycle.compose.collectAsStateWithLifecycle
import dev.tether.demo.core.ConversationId
import dev.tether.demo.core.SignInPhase
import dev.tether.demo.core.TetherStore
import kotlinx.coroutines.launch

@Composable
fun DemoTheme(content: @Composable () -> Unit) {
    MaterialTheme(colorScheme = if (isSystemInDarkTheme()) darkColorScheme() else lightColorScheme(), content = content)
}

@Composable
fun TetherApp(store: TetherStore) {
    val state by store.state.collectAsStateWithLifecycle()
    val scope = rememberCoroutineScope()
    var unsentWarning by remember { mutableStateOf<Int?>(null) }
    Surface(Modifier.fillMaxSize().safeDrawingPadding()) {
        if (state.phase == SignInPhase.SIGNED_OUT) {
            SignInScreen(state, onSignIn = store::signIn)
        } else {
            Column(Modifier.fillMaxSize()) {
                ConnectionBanner(state.banner)
                val chat = state.chat
                if (chat != null) {
                    BackHandler { store.closeConversation() }
                    ChatView(
                        chat,
                        onBack = store::closeConversation,
                        onSend = { text -> store.send(text) },
                        onLoadOlder = store::loadOlder,
                        onLeave = { (chat.id as? ConversationId.Room)?.let { store.leaveRoom(it.room) } },
                    )
                } else {
                    ConversationListScreen(
                        state,
                        onOpen = store::openConversation,
                        onStartDirect = store::startDirect,
                        onJoinRoom = store::joinRoom,
                        onSignOut = {
                            scope.launch {
                                val unsent = store.unsentCount()
                                if (unsent == 0) store.signOut() else unsentWarning = unsent
                            }
                        },
                    )
                }
            }
        }
        state.notice?.let { notice ->
            AlertDialog(
                onDismissRequest = store::dismissNotice,
                confirmButton = { TextButton(onClick = store::dismissNotice) { Text("OK") } },
                text = { Text(notice) },
            )
        }
        unsentWarning?.let { n ->
            AlertDialog(
                onDismissRequest = { unsentWarning = null },
                title = { Text("Sign out?") },
                text = { Text("$n message(s) are not sent yet and will be dropped.") },
                confirmButton = {
                    TextButton(onClick = {
                        unsentWarning = null
                        scope.launch { store.signOut() }
                    }) { Text("Sign out") }
                },
                dismissButton = { TextButton(onClick = { unsentWarning = null }) { Text("Cancel") } },
            )
        }
    }
}
