package dev.tether.demo.ui

import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.FilterChip
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import dev.tether.demo.core.AppState
import dev.tether.demo.core.CredentialKind
import dev.tether.demo.core.SignInForm

/** Server or registry URL, ticket or token, and (for a node's dev certificate) the PEM to pin. */
@Composable
fun SignInScreen(state: AppState, onSignIn: (SignInForm) -> Unit) {
    val last = state.lastForm
    var address by rememberSaveable { mutableStateOf(last?.address ?: "10.0.2.2:7443") }
    var kind by rememberSaveable { mutableStateOf(last?.kind ?: CredentialKind.TICKET) }
    var credential by rememberSaveable { mutableStateOf("") }
    var serverName by rememberSaveable { mutableStateOf(last?.serverName ?: "localhost") }
    var pem by rememberSaveable { mutableStateOf(last?.pinnedCertPem ?: "") }
    Column(
        Modifier.fillMaxSize().padding(16.dp).verticalScroll(rememberScrollState()),
        verticalArrangement = Arrangement.spacedBy(12.dp),
    ) {
        Text("Tether demo", style = MaterialTheme.typography.headlineMedium)
        OutlinedTextField(
            address, { address = it },
            label = { Text("Server host:port, or registry URL (http://…/eureka/)") },
            singleLine = true, modifier = Modifier.fillMaxWidth(),
        )
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            FilterChip(selected = kind == CredentialKind.TICKET, onClick = { kind = CredentialKind.TICKET }, label = { Text("Ticket") })
            FilterChip(selected = kind == CredentialKind.TOKEN, onClick = { kind = CredentialKind.TOKEN }, label = { Text("Token (JWT)") })
        }
        OutlinedTextField(
            credential, { credential = it },
            label = { Text(if (kind == CredentialKind.TICKET) "Ticket from the admin API" else "JWT from your backend") },
            singleLine = true, modifier = Modifier.fillMaxWidth(),
        )
        OutlinedTextField(
            serverName, { serverName = it },
            label = { Text("TLS server name (a node's dev certificate: localhost)") },
            singleLine = true, modifier = Modifier.fillMaxWidth(),
        )
        OutlinedTextField(
            pem, { pem = it },
            label = { Text("Certificate to pin (PEM of tether-data/dev-cert.pem); empty: system trust") },
            minLines = 3, maxLines = 6, modifier = Modifier.fillMaxWidth(),
        )
        state.signInError?.let { Text(it, color = MaterialTheme.colorScheme.error) }
        Button(onClick = { onSignIn(SignInForm(address, kind, credential, serverName, pem)) }, modifier = Modifier.fillMaxWidth()) {
            Text("Sign in")
        }
    }
}
