package dev.tether.demo.ui

import androidx.compose.foundation.background
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Box
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.PaddingValues
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.foundation.layout.width
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.foundation.lazy.rememberLazyListState
import androidx.compose.foundation.shape.RoundedCornerShape
import androidx.compose.material3.Button
import androidx.compose.material3.CircularProgressIndicator
import androidx.compose.material3.HorizontalDivider
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.runtime.Composable
import androidx.compose.runtime.LaunchedEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableLongStateOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.text.style.TextAlign
import androidx.compose.ui.unit.dp
import dev.tether.demo.core.Banner
import dev.tether.demo.core.BannerKind
import dev.tether.demo.core.ChatRow
import dev.tether.demo.core.ChatScreen
import dev.tether.demo.core.Delivery
import kotlinx.coroutines.delay

/** One chat: messages with their delivery state, room lines and counts, history paging. */
@Composable
fun ChatView(chat: ChatScreen, onBack: () -> Unit, onSend: (String) -> Unit, onLoadOlder: () -> Unit, onLeave: () -> Unit) {
    var draft by rememberSaveable(chat.id.key) { mutableStateOf("") }
    val listState = rememberLazyListState()
    val header = if (chat.isRoom && (chat.canLoadOlder || chat.loadingOlder)) 1 else 0
    // Follow the newest row (a page of older history does not move the view).
    LaunchedEffect(chat.id.key, chat.rows.lastOrNull()?.key) {
        if (chat.rows.isNotEmpty()) listState.animateScrollToItem(chat.rows.size - 1 + header)
    }
    Column(Modifier.fillMaxSize()) {
        Row(Modifier.fillMaxWidth().padding(horizontal = 8.dp, vertical = 4.dp), verticalAlignment = Alignment.CenterVertically) {
            TextButton(onClick = onBack) { Text("‹ Back") }
            if (!chat.isRoom) {
                PresenceDot(chat.peerOnline)
                Spacer(Modifier.width(8.dp))
            }
            Column(Modifier.weight(1f)) {
                Text(chat.title, style = MaterialTheme.typography.titleMedium)
                if (chat.subtitle.isNotEmpty()) Text(chat.subtitle, style = MaterialTheme.typography.labelSmall)
            }
            if (chat.isRoom) TextButton(onClick = onLeave) { Text("Leave") }
        }
        HorizontalDivider()
        LazyColumn(
            Modifier.weight(1f).fillMaxWidth(),
            state = listState,
            contentPadding = PaddingValues(12.dp),
            verticalArrangement = Arrangement.spacedBy(6.dp),
        ) {
            if (header == 1) {
                item(key = "older") {
                    Box(Modifier.fillMaxWidth(), contentAlignment = Alignment.Center) {
                        if (chat.loadingOlder) CircularProgressIndicator(Modifier.size(20.dp))
                        else TextButton(onClick = onLoadOlder) { Text("Load earlier messages") }
                    }
                }
            }
            items(chat.rows, key = { it.key }) { row ->
                when (row) {
                    is ChatRow.Line -> Text(
                        row.text,
                        Modifier.fillMaxWidth(),
                        textAlign = TextAlign.Center,
                        style = MaterialTheme.typography.labelMedium,
                        color = MaterialTheme.colorScheme.onSurfaceVariant,
                    )
                    is ChatRow.Msg -> MessageBubble(row, showSender = chat.isRoom)
                }
            }
        }
        Row(Modifier.fillMaxWidth().padding(8.dp), verticalAlignment = Alignment.CenterVertically, horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            OutlinedTextField(draft, { draft = it }, Modifier.weight(1f), placeholder = { Text("Message") }, maxLines = 4)
            Button(
                onClick = {
                    onSend(draft)
                    draft = ""
                },
                enabled = draft.isNotBlank(),
            ) { Text("Send") }
        }
    }
}

@Composable
private fun MessageBubble(m: ChatRow.Msg, showSender: Boolean) {
    Column(Modifier.fillMaxWidth(), horizontalAlignment = if (m.mine) Alignment.End else Alignment.Start) {
        if (showSender && !m.mine) Text(m.from, style = MaterialTheme.typography.labelSmall)
        Surface(
            shape = RoundedCornerShape(12.dp),
            color = if (m.mine) MaterialTheme.colorScheme.primaryContainer else MaterialTheme.colorScheme.surfaceVariant,
        ) {
            Text(m.text, Modifier.padding(horizontal = 10.dp, vertical = 6.dp))
        }
        Text(
            listOf(m.time, m.status).filter { it.isNotEmpty() }.joinToString(" · "),
            style = MaterialTheme.typography.labelSmall,
            color = if (m.delivery == Delivery.FAILED) MaterialTheme.colorScheme.error else MaterialTheme.colorScheme.onSurfaceVariant,
        )
    }
}

/** Connecting, online, backing off (counting down to the next retry), paused, kicked. */
@Composable
fun ConnectionBanner(banner: Banner) {
    var now by remember { mutableLongStateOf(System.currentTimeMillis()) }
    if (banner.kind == BannerKind.BACKOFF) {
        LaunchedEffect(banner) {
            while (true) {
                now = System.currentTimeMillis()
                delay(250)
            }
        }
    }
    val (background, foreground) = when (banner.kind) {
        BannerKind.ONLINE -> Color(0xFF2E7D32) to Color.White
        BannerKind.CONNECTING -> Color(0xFFF9A825) to Color.Black
        BannerKind.BACKOFF -> Color(0xFFE65100) to Color.White
        BannerKind.PAUSED, BannerKind.SIGNED_OUT -> Color(0xFF616161) to Color.White
        BannerKind.KICKED, BannerKind.AUTH_FAILED -> MaterialTheme.colorScheme.error to MaterialTheme.colorScheme.onError
    }
    Text(
        banner.textAt(now),
        Modifier.fillMaxWidth().background(background).padding(horizontal = 16.dp, vertical = 6.dp),
        color = foreground,
        style = MaterialTheme.typography.labelLarge,
    )
}
