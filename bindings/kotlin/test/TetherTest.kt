// Kotlin tests of the generated bindings, on the JVM, against a real tether-server process.
// Run by bindings/scripts/kotlin-test (part of the project's test command).
package tether.test

import java.io.BufferedReader
import java.io.File
import java.io.InputStreamReader
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.util.Base64
import java.util.concurrent.atomic.AtomicInteger
import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec
import kotlin.system.exitProcess
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.ReceiveChannel
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.produceIn
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import uniffi.tether_ffi.*
import uniffi.tether_ffi.Target

const val JWT_SECRET = "kotlin-test-secret"
const val ADMIN_TOKEN = "kotlin-test-admin"

/** A tether-server process on free loopback ports, restartable on the same data and port. */
class Node(private val bin: String, private val extraArgs: List<String> = emptyList()) {
    val dir: File = Files.createTempDirectory("tether-kt").toFile()
    var quic = "127.0.0.1:0"
    var admin = ""
    private var proc: Process? = null

    fun start() {
        val p = ProcessBuilder(
            bin, "--data-dir", dir.path, "--quic-addr", quic, "--admin-addr", "127.0.0.1:0",
            "--jwt-secret", JWT_SECRET, "--admin-token", ADMIN_TOKEN, "--log", "warn", *extraArgs.toTypedArray(),
        ).redirectError(File(dir, "server.log")).start()
        val line = BufferedReader(InputStreamReader(p.inputStream)).readLine()
            ?: error("server did not start: " + File(dir, "server.log").readText())
        quic = Regex("quic=(\\S+)").find(line)!!.groupValues[1]
        admin = Regex("admin=(\\S+)").find(line)!!.groupValues[1]
        proc = p
    }

    fun kill() {
        proc?.destroyForcibly()?.waitFor()
        proc = null
    }

    val cert: String get() = File(dir, "dev-cert.pem").path

    fun ticket(user: String): String {
        val req = HttpRequest.newBuilder(URI("http://$admin/v1/tickets"))
            .header("Authorization", "Bearer $ADMIN_TOKEN")
            .header("Content-Type", "application/json")
            .POST(HttpRequest.BodyPublishers.ofString("{\"user\":\"$user\"}")).build()
        val body = HttpClient.newHttpClient().send(req, HttpResponse.BodyHandlers.ofString()).body()
        return Regex("\"ticket\":\"([^\"]+)\"").find(body)!!.groupValues[1]
    }
}

fun jwt(user: String, ttlSecs: Long = 3600): String {
    val b64 = Base64.getUrlEncoder().withoutPadding()
    val header = b64.encodeToString("{\"alg\":\"HS256\",\"typ\":\"JWT\"}".toByteArray())
    val exp = System.currentTimeMillis() / 1000 + ttlSecs
    val claims = b64.encodeToString("{\"sub\":\"$user\",\"exp\":$exp}".toByteArray())
    val mac = Mac.getInstance("HmacSHA256").apply { init(SecretKeySpec(JWT_SECRET.toByteArray(), "HmacSHA256")) }
    val sig = b64.encodeToString(mac.doFinal("$header.$claims".toByteArray()))
    return "$header.$claims.$sig"
}

fun config(node: Node, device: String, stateDir: String? = null) = ClientConfig(
    server = node.quic,
    serverName = "localhost",
    trust = Trust.Pinned(node.cert),
    deviceType = device.substringAfter('-'),
    deviceId = device,
    stateDir = stateDir,
    metadata = mapOf("app" to "kotlin-test"),
    timing = Timing(
        heartbeatIntervalMs = 500uL, heartbeatTimeoutMs = 1000uL,
        backoffBaseMs = 100uL, backoffMaxMs = 1000uL, ackTimeoutMs = 3000uL,
    ),
)

/** A started client and its events. */
class Peer(val client: TetherClient, val events: ReceiveChannel<Event>)

suspend fun peer(scope: CoroutineScope, cfg: ClientConfig, credential: () -> Credential?): Peer {
    val client = startClient(cfg, credentialProvider(credential))
    val events = client.events().produceIn(scope)
    withTimeout(20_000) { client.waitOnline() }
    return Peer(client, events)
}

/** The next message event's text (other events skipped). */
suspend fun Peer.nextText(ms: Long = 15_000): String = withTimeout(ms) {
    while (true) {
        val e = events.receive()
        if (e is Event.Message) return@withTimeout String(e.message.payload)
    }
    @Suppress("UNREACHABLE_CODE") ""
}

val passed = AtomicInteger()
val failed = AtomicInteger()

fun check(cond: Boolean, what: () -> String) {
    if (!cond) throw AssertionError(what())
}

fun test(name: String, body: suspend CoroutineScope.() -> Unit) {
    try {
        runBlocking(Dispatchers.Default) { withTimeout(120_000) { body() } }
        passed.incrementAndGet()
        println("ok   $name")
    } catch (t: Throwable) {
        failed.incrementAndGet()
        println("FAIL $name: $t")
        t.printStackTrace(System.out)
    }
}

fun main(args: Array<String>) {
    val bin = args.getOrNull(0) ?: error("usage: TetherTest <tether-server binary>")
    val node = Node(bin)
    node.start()
    val scope = CoroutineScope(Dispatchers.Default)

    test("login with a ticket and with a JWT from the token callback; 1:1 through the Flow") {
        val bob = peer(scope, config(node, "bob1-phone")) { Credential.Ticket(node.ticket("bob1")) }
        val alice = peer(scope, config(node, "alice1-phone")) { Credential.Token(jwt("alice1")) }
        val ack = alice.client.sendText("bob1", "hello bob").ack()
        check(!ack.duplicate) { "fresh message" }
        check(bob.nextText() == "hello bob") { "bob got it" }
        alice.client.stop(); bob.client.stop()
    }

    test("discovery: given only the registry URL, the client finds the node through the registry") {
        // The node registers itself with the registry it embeds on its admin listener.
        val cfg = config(node, "alice8-phone").copy(
            server = "",
            registryUrls = listOf("http://${node.admin}/eureka/"),
            registryApp = "TETHER",
            discoveryRefreshMs = 1000uL,
        )
        val alice = peer(scope, cfg) { Credential.Token(jwt("alice8")) }
        val bob = peer(scope, config(node, "bob8-phone")) { Credential.Token(jwt("bob8")) }
        alice.client.sendText("bob8", "found you").ack()
        check(bob.nextText() == "found you") { "delivered" }
        alice.client.stop(); bob.client.stop()
    }

    test("the first listener gets the events since startClient: the login and the backlog") {
        val sender = peer(scope, config(node, "alice11-phone")) { Credential.Token(jwt("alice11")) }
        sender.client.sendText("bob11", "waiting for you").ack()
        // bob starts and is online before anyone listens.
        val bob = startClient(config(node, "bob11-phone"), credentialProvider { Credential.Token(jwt("bob11")) })
        withTimeout(20_000) { bob.waitOnline() }
        delay(300)
        val events = bob.events().produceIn(scope)
        var loggedIn = false
        var text = ""
        withTimeout(15_000) {
            while (text.isEmpty()) {
                when (val e = events.receive()) {
                    is Event.LoggedIn -> loggedIn = true
                    is Event.Message -> text = String(e.message.payload)
                    else -> {}
                }
            }
        }
        check(loggedIn) { "the login reached the first listener, before the backlog" }
        check(text == "waiting for you") { "the backlog reached it: $text" }
        sender.client.stop(); bob.stop()
    }

    test("an expired JWT is refreshed through the token callback") {
        val calls = AtomicInteger()
        // The first token has expired; the provider is asked again after the refusal.
        val carol = startClient(config(node, "carol-phone"), credentialProvider {
            if (calls.getAndIncrement() == 0) Credential.Token(jwt("carol", -3600)) else Credential.Token(jwt("carol"))
        })
        val events = carol.events().produceIn(this)
        withTimeout(20_000) {
            while (true) {
                val e = events.receive()
                if (e is Event.LoggedIn) { check(e.user == "carol") { "user ${e.user}" }; break }
            }
        }
        check(calls.get() >= 2) { "the provider was asked again: ${calls.get()}" }
        events.cancel()
        carol.stop()
    }

    test("a room: join, send, receive") {
        val alice = peer(scope, config(node, "alice3-tablet")) { Credential.Token(jwt("alice3")) }
        val bob = peer(scope, config(node, "bob3-tablet")) { Credential.Token(jwt("bob3")) }
        alice.client.joinRoom("kotlin-room")
        val joined = bob.client.joinRoom("kotlin-room")
        check(joined.room == "kotlin-room") { "joined $joined" }
        alice.client.send(Target.Room("kotlin-room"), "text/plain", "hi room".toByteArray()).ack()
        check(bob.nextText() == "hi room") { "room message" }
        alice.client.stop(); bob.client.stop()
    }

    test("presence through the Flow: online with metadata, then offline; a batch send in order") {
        val alice = peer(scope, config(node, "alice9-phone")) { Credential.Token(jwt("alice9")) }
        alice.client.subscribePresence(listOf("bob9"))
        suspend fun presence(): Presence = withTimeout(15_000) {
            while (true) {
                val e = alice.events.receive()
                if (e is Event.Presence && e.presence.user == "bob9") return@withTimeout e.presence
            }
            @Suppress("UNREACHABLE_CODE") error("unreachable")
        }
        check(!presence().online) { "bob9 starts offline" }
        val bob = peer(scope, config(node, "bob9-phone")) { Credential.Token(jwt("bob9")) }
        val online = presence()
        check(online.online) { "bob9 online: $online" }
        check(online.devices.any { it.deviceType == "phone" && it.metadata["app"] == "kotlin-test" }) { "device and metadata: $online" }
        // Several messages in one call arrive in the order of the list.
        val handles = alice.client.sendBatch(List(20) { OutgoingMessage(Target.User("bob9"), "text/plain", "batch $it".toByteArray()) })
        check(handles.size == 20) { "one handle per message" }
        handles.forEach { it.ack() }
        for (i in 0 until 20) check(bob.nextText() == "batch $i") { "batch message $i in order" }
        bob.client.stop()
        var offline = presence()
        while (offline.online) offline = presence()
        check(offline.lastSeenMs > 0uL) { "last seen when offline: $offline" }
        alice.client.stop()
    }

    test("a typed error surfaces as a Kotlin exception") {
        val alice = peer(scope, config(node, "alice4-desktop")) { Credential.Token(jwt("alice4")) }
        try {
            alice.client.joinRoom("")
            throw AssertionError("an empty room id was accepted")
        } catch (e: TetherException.Refused) {
            check(e.code == ErrorCode.INVALID_FIELD) { "code ${e.code}" }
        }
        alice.client.stop()
        try {
            alice.client.outbox()
            throw AssertionError("a closed client answered")
        } catch (e: TetherException.Closed) {
        }
    }

    test("pause, messages meanwhile, resume: each exactly once") {
        val alice = peer(scope, config(node, "alice5-watch")) { Credential.Token(jwt("alice5")) }
        val bob = peer(scope, config(node, "bob5-watch")) { Credential.Token(jwt("bob5")) }
        bob.client.pause()
        withTimeout(10_000) { while (bob.client.state() != ConnectionState.Paused) delay(20) }
        for (i in 0 until 3) alice.client.sendText("bob5", "paused $i").ack()
        bob.client.resume()
        for (i in 0 until 3) check(bob.nextText() == "paused $i") { "message $i after resume" }
        val extra = withTimeoutOrNull(500) { bob.nextText() }
        check(extra == null) { "delivered twice: $extra" }
        alice.client.stop(); bob.client.stop()
    }

    test("1,000 sends without awaiting arrive in call order; network change mid-conversation") {
        val alice = peer(scope, config(node, "alice6-laptop")) { Credential.Token(jwt("alice6")) }
        val bob = peer(scope, config(node, "bob6-laptop")) { Credential.Token(jwt("bob6")) }
        val handles = (0 until 1000).map { alice.client.sendText("bob6", "n$it") }
        alice.client.networkChanged()
        for (i in 0 until 1000) check(bob.nextText() == "n$i") { "message $i in order" }
        handles.forEach { it.ack() }
        alice.client.stop(); bob.client.stop()
    }

    test("a server restart is survived and a pending send is listed after the app restarts") {
        val state = Files.createTempDirectory("tether-kt-state").toFile().path
        val bob = peer(scope, config(node, "bob7-car")) { Credential.Token(jwt("bob7")) }
        val alice = peer(scope, config(node, "alice7-car", state)) { Credential.Token(jwt("alice7")) }
        node.kill()
        val pending = alice.client.sendText("bob7", "written while the node was down")
        alice.client.stop()
        // The app starts again, the node still down: the message is listed for local echo.
        val again = startClient(config(node, "alice7-car", state), credentialProvider { Credential.Token(jwt("alice7")) })
        val listed = again.outbox()
        check(listed.size == 1 && listed[0].clientMsgId == pending.clientMsgId()) { "outbox $listed" }
        node.start()
        check(bob.nextText(30_000) == "written while the node was down") { "delivered after the restart" }
        withTimeout(20_000) { while (again.outbox().isNotEmpty()) delay(50) }
        again.stop(); bob.client.stop()
    }

    node.kill()
    val p = passed.get()
    val f = failed.get()
    println("kotlin: $p passed, $f failed")
    exitProcess(if (f == 0) 0 else 1)
}
