package dev.tether.demo.ui

import androidx.compose.foundation.background
import androidx.compose.foundation.clickable
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Box
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.foundation.layout.width
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.foundation.shape.CircleShape
import androidx.compose.material3.Badge
import androidx.compose.material3.Button
import androidx.compose.material3.HorizontalDivider
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.draw.clip
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.text.style.TextOverflow
import androidx.compose.ui.unit.dp
import dev.tether.demo.core.AppState
import dev.tether.demo.core.ConversationId
import dev.tether.demo.core.ConversationRow

@Composable
fun ConversationListScreen(
    state: AppState,
    onOpen: (ConversationId) -> Unit,
    onStartDirect: (String) -> Unit,
    onJoinRoom: (String) -> Unit,
    onSignOut: () -> Unit,
) {
    var target by rememberSaveable { mutableStateOf("") }
    Column(Modifier.fillMaxSize()) {
        Row(Modifier.fillMaxWidth().padding(horizontal = 16.dp, vertical = 8.dp), verticalAlignment = Alignment.CenterVertically) {
            Text(state.user?.let { "Signed in as $it" } ?: "Signing in…", Modifier.weight(1f), style = MaterialTheme.typography.titleMedium)
            TextButton(onClick = onSignOut) { Text("Sign out") }
        }
        Row(
            Modifier.fillMaxWidth().padding(horizontal = 16.dp),
            verticalAlignment = Alignment.CenterVertically,
            horizontalArrangement = Arrangement.spacedBy(8.dp),
        ) {
            OutlinedTextField(target, { target = it }, Modifier.weight(1f), singleLine = true, label = { Text("User id, or #room") })
            val room = target.trim().startsWith("#")
            Button(
                onClick = {
                    if (room) onJoinRoom(target) else onStartDirect(target)
                    target = ""
                },
                enabled = target.isNotBlank(),
            ) { Text(if (room) "Join" else "Chat") }
        }
        if (state.conversations.isEmpty()) {
            Text("No conversations yet: start a chat with a user id, or join a #room.", Modifier.padding(16.dp))
        }
        LazyColumn(Modifier.fillMaxSize()) {
            items(state.conversations, key = { it.id.key }) { row ->
                ConversationItem(row) { onOpen(row.id) }
                HorizontalDivider()
            }
        }
    }
}

@Composable
private fun ConversationItem(row: ConversationRow, onClick: () -> Unit) {
    Row(Modifier.fillMaxWidth().clickable(onClick = onClick).padding(horizontal = 16.dp, vertical = 12.dp), verticalAlignment = Alignment.CenterVertically) {
        if (!row.isRoom) {
            PresenceDot(row.online)
            Spacer(Modifier.width(10.dp))
        }
        Column(Modifier.weight(1f)) {
            Row(verticalAlignment = Alignment.CenterVertically) {
                Text(row.title, Modifier.weight(1f), style = MaterialTheme.typography.titleMedium, maxLines = 1, overflow = TextOverflow.Ellipsis)
                Text(row.lastTime, style = MaterialTheme.typography.labelSmall)
            }
            Row(verticalAlignment = Alignment.CenterVertically, horizontalArrangement = Arrangement.spacedBy(6.dp)) {
                Text(
                    row.lastMessage ?: "No messages yet",
                    Modifier.weight(1f),
                    style = MaterialTheme.typography.bodyMedium,
                    color = MaterialTheme.colorScheme.onSurfaceVariant,
                    maxLines = 1,
                    overflow = TextOverflow.Ellipsis,
                )
                row.onlineCount?.let { Text("$it online", style = MaterialTheme.typography.labelSmall) }
                if (row.unread > 0) Badge { Text("${row.unread}") }
            }
        }
    }
}

/** Green online, grey offline, nothing while unknown. */
@Composable
fun PresenceDot(online: Boolean?) {
    val color = when (online) {
        true -> Color(0xFF2E7D32)
        false -> Color(0xFF9E9E9E)
        null -> Color.Transparent
    }
    Box(Modifier.size(10.dp).clip(CircleShape).background(color))
}
