// The sign-in form and what it turns into: the SDK's ClientConfig and credential (plain Kotlin).
package dev.tether.demo.core

import java.io.File
import java.util.Base64
import uniffi.tether_ffi.ClientConfig
import uniffi.tether_ffi.Credential
import uniffi.tether_ffi.Timing
import uniffi.tether_ffi.Trust

enum class CredentialKind { TICKET, TOKEN }

/** Where the app keeps its files and who this device is. */
data class DeviceProfile(
    /** An app-private directory (Android: `Context.filesDir`). */
    val dataDir: String,
    /** One session per user and device type: a second login of the same type replaces the first. */
    val deviceType: String = "phone",
    /** null: the SDK makes one and keeps it in the state dir. */
    val deviceId: String? = null,
    /** Shown to others in presence (app version, OS). */
    val metadata: Map<String, String> = emptyMap(),
    /** null: the SDK's timers. */
    val timing: Timing? = null,
) {
    /** The SDK's state dir: outbox, cursors, resume token, node list. */
    val stateDir: String get() = File(dataDir, "tether-state").path

    /** Where a pinned certificate from the sign-in form is written for the SDK to read. */
    val pinnedCertFile: File get() = File(dataDir, "pinned-server.pem")
}

/** The sign-in screen's fields. */
data class SignInForm(
    /** `host:port` of a node, or a registry URL (`http://10.0.2.2:7080/eureka/`). */
    val address: String,
    val kind: CredentialKind,
    /** A one-time ticket from the admin API, or a JWT from the app's backend. */
    val credential: String,
    /** The name checked against the server certificate; empty: the host of the address. */
    val serverName: String = "",
    /** A node's certificate to pin (PEM, e.g. its dev certificate); empty: the platform's trust store. */
    val pinnedCertPem: String = "",
) {
    val usesRegistry: Boolean
        get() = address.trim().let { it.startsWith("http://") || it.startsWith("https://") }

    /** What is wrong with the form, or null. */
    fun problem(): String? {
        val a = address.trim()
        if (a.isEmpty()) return "Enter a server (host:port) or a registry URL"
        if (!usesRegistry) {
            val port = a.substringAfterLast(':', "").toIntOrNull()
            if (!a.contains(':') || port == null || port !in 1..65535) {
                return "A server is host:port (an emulator reaches the host at 10.0.2.2:7443)"
            }
        }
        val c = credential.trim()
        if (c.isEmpty()) return if (kind == CredentialKind.TICKET) "Paste a ticket from the admin API" else "Paste a token (JWT)"
        if (kind == CredentialKind.TOKEN && c.count { it == '.' } != 2) return "A token is a JWT: three parts separated by dots"
        if (pinnedCertPem.isNotBlank() && !pinnedCertPem.contains("-----BEGIN CERTIFICATE-----")) {
            return "The certificate to pin must be PEM (-----BEGIN CERTIFICATE-----)"
        }
        return null
    }

    fun credential(): Credential = when (kind) {
        CredentialKind.TICKET -> Credential.Ticket(credential.trim())
        CredentialKind.TOKEN -> Credential.Token(credential.trim())
    }

    /** The registry base URL, with `/eureka/` added when only the host was given. */
    fun registryUrl(): String {
        val a = address.trim()
        val afterScheme = a.substringAfter("://")
        return if (!afterScheme.contains('/') || afterScheme.endsWith(":") || afterScheme.substringAfter('/').isEmpty()) {
            a.trimEnd('/') + "/eureka/"
        } else {
            if (a.endsWith("/")) a else "$a/"
        }
    }

    /** The SDK configuration. Writes the pinned certificate (if any) to [DeviceProfile.pinnedCertFile]. */
    fun clientConfig(device: DeviceProfile): ClientConfig {
        val trust = if (pinnedCertPem.isNotBlank()) {
            val f = device.pinnedCertFile
            f.parentFile?.mkdirs()
            f.writeText(pinnedCertPem.trim() + "\n")
            Trust.Pinned(f.path)
        } else {
            Trust.Platform
        }
        File(device.stateDir).mkdirs()
        return ClientConfig(
            server = if (usesRegistry) "" else address.trim(),
            serverName = serverName.trim().ifEmpty { null },
            trust = trust,
            deviceType = device.deviceType,
            deviceId = device.deviceId,
            stateDir = device.stateDir,
            metadata = device.metadata,
            timing = device.timing,
            registryUrls = if (usesRegistry) listOf(registryUrl()) else emptyList(),
        )
    }

    /** The user a JWT names (`sub`), read without checking it (the server checks it); null for tickets. */
    fun tokenSubject(): String? {
        if (kind != CredentialKind.TOKEN) return null
        val parts = credential.trim().split('.')
        if (parts.size != 3) return null
        val claims = runCatching { String(Base64.getUrlDecoder().decode(parts[1].trimEnd('=')), Charsets.UTF_8) }.getOrNull()
            ?: return null
        return Regex("\"sub\"\\s*:\\s*\"([^\"]+)\"").find(claims)?.groupValues?.get(1)
    }
}
