// The android-demo's non-UI Kotlin (dev.tether.demo.core) on the JVM, against a real
// tether-server process: two view models (alice and bob) sign in, chat 1:1 and in rooms, and the
// screen state each one exposes is asserted step by step. Run by android-demo/scripts/core-test
// (part of the project's test command); the Compose screens only draw these states.
package dev.tether.demo.coretest

import dev.tether.demo.core.AppState
import dev.tether.demo.core.Banner
import dev.tether.demo.core.BannerKind
import dev.tether.demo.core.CacheSnapshot
import dev.tether.demo.core.CachedConversation
import dev.tether.demo.core.CachedMessage
import dev.tether.demo.core.ChatRow
import dev.tether.demo.core.ConversationId
import dev.tether.demo.core.CredentialKind
import dev.tether.demo.core.Delivery
import dev.tether.demo.core.DeviceProfile
import dev.tether.demo.core.FileMessageCache
import dev.tether.demo.core.Format
import dev.tether.demo.core.SignInForm
import dev.tether.demo.core.SignInPhase
import dev.tether.demo.core.TetherStore
import java.io.BufferedReader
import java.io.File
import java.io.InputStreamReader
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.time.ZoneId
import java.time.ZoneOffset
import java.time.ZonedDateTime
import java.util.Base64
import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking
import uniffi.tether_ffi.Timing

const val JWT_SECRET = "core-test-secret"
const val ADMIN_TOKEN = "core-test-admin"

/** A tether-server process on loopback, restartable on the same ports and data dir. */
class Node(private val bin: String) {
    val dir: File = Files.createTempDirectory("tether-demo-node").toFile()
    var quic = "127.0.0.1:0"
    var admin = "127.0.0.1:0"
    private var proc: Process? = null

    fun start() {
        val p = ProcessBuilder(
            bin, "--data-dir", dir.path, "--quic-addr", quic, "--admin-addr", admin,
            "--jwt-secret", JWT_SECRET, "--admin-token", ADMIN_TOKEN, "--log", "warn",
        ).redirectError(ProcessBuilder.Redirect.appendTo(File(dir, "server.log"))).start()
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

    val certPem: String get() = File(dir, "dev-cert.pem").readText()

    fun ticket(user: String): String {
        val req = HttpRequest.newBuilder(URI("http://$admin/v1/tickets"))
            .header("Authorization", "Bearer $ADMIN_TOKEN")
            .header("Content-Type", "application/json")
            .POST(HttpRequest.BodyPublishers.ofString("{\"user\":\"$user\"}")).build()
        val body = HttpClient.newHttpClient().send(req, HttpResponse.BodyHandlers.ofString()).body()
        return Regex("\"ticket\":\"([^\"]+)\"").find(body)?.groupValues?.get(1) ?: error("no ticket: $body")
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

/** Short timers, so that a dead node is noticed in about a second. */
val FAST = Timing(heartbeatIntervalMs = 500uL, heartbeatTimeoutMs = 1000uL, backoffBaseMs = 200uL, backoffMaxMs = 1000uL, ackTimeoutMs = 3000uL)

/** A view model on its own files, and every state it published, in order. */
class Vm(val name: String, val dataDir: File, deviceId: String) {
    val store = TetherStore(
        DeviceProfile(dataDir.path, deviceType = "phone", deviceId = deviceId, metadata = mapOf("app" to "android-demo-core-test"), timing = FAST),
        pageSize = 10,
    )
    val states: MutableList<AppState> = java.util.Collections.synchronizedList(ArrayList())

    init {
        store.observe { states += it }
    }

    val now: AppState get() = store.state.value

    fun history(): List<AppState> = synchronized(states) { states.toList() }

    /** Waits until the state satisfies [pred]; fails with the state it saw last. */
    fun await(what: String, ms: Long = 20_000, pred: (AppState) -> Boolean): AppState {
        val end = System.currentTimeMillis() + ms
        while (true) {
            val s = now
            if (pred(s)) return s
            if (System.currentTimeMillis() > end) throw AssertionError("$name: timed out waiting for $what; state: ${describe(s)}")
            Thread.sleep(20)
        }
    }

    /** The chat's messages (info lines left out). */
    fun messages(s: AppState = now): List<ChatRow.Msg> = s.chat?.rows?.filterIsInstance<ChatRow.Msg>().orEmpty()

    /** The states one message went through, in order, repeats folded. */
    fun deliveries(clientMsgId: String): List<Delivery> {
        val seen = ArrayList<Delivery>()
        for (s in history()) {
            val d = messages(s).firstOrNull { it.clientMsgId == clientMsgId && it.mine }?.delivery ?: continue
            if (seen.lastOrNull() != d) seen += d
        }
        return seen
    }

    /** The banner kinds published, in order, repeats folded. */
    fun banners(from: Int = 0): List<BannerKind> {
        val seen = ArrayList<BannerKind>()
        for (s in history().drop(from)) if (s.phase == SignInPhase.SIGNED_IN && seen.lastOrNull() != s.banner.kind) seen += s.banner.kind
        return seen
    }
}

fun describe(s: AppState): String = buildString {
    append("phase=${s.phase} user=${s.user} error=${s.signInError} banner=${s.banner.kind}/'${s.banner.text}' notice=${s.notice}\n")
    for (r in s.conversations) append("  list: ${r.id.key} unread=${r.unread} last='${r.lastMessage}' online=${r.online} count=${r.onlineCount}\n")
    s.chat?.let { c ->
        append("  chat ${c.id.key} '${c.subtitle}' older=${c.canLoadOlder} loading=${c.loadingOlder}\n")
        for (r in c.rows) {
            when (r) {
                is ChatRow.Msg -> append("    ${r.from}: ${r.text} [${r.delivery}] seq=${r.seq}\n")
                is ChatRow.Line -> append("    -- ${r.text}\n")
            }
        }
    }
}

fun check(cond: Boolean, what: () -> String) {
    if (!cond) throw AssertionError(what())
}

var steps = 0

fun step(name: String, body: () -> Unit) {
    val t0 = System.currentTimeMillis()
    body()
    steps++
    println("ok   $name (${System.currentTimeMillis() - t0} ms)")
}

fun unitChecks() {
    val utc = ZoneOffset.UTC
    val now = ZonedDateTime.of(2024, 3, 5, 14, 0, 0, 0, utc).toInstant().toEpochMilli()
    fun at(y: Int, mo: Int, d: Int, h: Int, mi: Int) = ZonedDateTime.of(y, mo, d, h, mi, 0, 0, utc).toInstant().toEpochMilli()
    check(Format.time(at(2024, 3, 5, 9, 7), now, utc) == "09:07") { "today" }
    check(Format.time(at(2024, 3, 4, 23, 59), now, utc) == "Yesterday") { "yesterday" }
    check(Format.time(at(2024, 3, 2, 10, 0), now, utc) == "Sat") { "this week: ${Format.time(at(2024, 3, 2, 10, 0), now, utc)}" }
    check(Format.time(at(2024, 1, 10, 10, 0), now, utc) == "10 Jan") { "this year" }
    check(Format.time(at(2023, 12, 31, 10, 0), now, utc) == "31 Dec 2023") { "older" }
    check(Format.time(at(2024, 3, 5, 23, 30), now, ZoneId.of("Europe/Berlin")) == "00:30") { "zone" }
    check(Format.lastSeen(now - 5 * 60_000, now, utc) == "last seen 5 min ago") { "last seen" }
    val backoff = Banner(BannerKind.BACKOFF, "", retryAtMs = now + 2_500, attempt = 2)
    check(Format.bannerText(backoff, now) == "Offline · retrying in 3 s (attempt 2)") { Format.bannerText(backoff, now) }
    check(Format.bannerText(backoff, now + 3_000) == "Offline · retrying now (attempt 2)") { "retry due" }
    check(Format.roomSubtitle(2, 3) == "2 online · 3 members") { "room subtitle" }

    check(SignInForm("", CredentialKind.TICKET, "t").problem() != null) { "empty address" }
    check(SignInForm("10.0.2.2", CredentialKind.TICKET, "t").problem()!!.contains("host:port")) { "no port" }
    check(SignInForm("10.0.2.2:7443", CredentialKind.TOKEN, "not-a-jwt").problem()!!.contains("JWT")) { "bad jwt" }
    check(SignInForm("10.0.2.2:7443", CredentialKind.TICKET, "t", pinnedCertPem = "junk").problem()!!.contains("PEM")) { "bad pem" }
    check(SignInForm("10.0.2.2:7443", CredentialKind.TICKET, "t").problem() == null) { "valid" }
    check(SignInForm("http://10.0.2.2:7080", CredentialKind.TICKET, "t").registryUrl() == "http://10.0.2.2:7080/eureka/") { "registry url" }
    check(SignInForm("http://r:7080/eureka", CredentialKind.TICKET, "t").registryUrl() == "http://r:7080/eureka/") { "registry url /" }
    check(SignInForm("h:1", CredentialKind.TOKEN, jwt("zoe")).tokenSubject() == "zoe") { "jwt sub" }

    val snap = CacheSnapshot(
        "alice", 7,
        listOf(
            CachedConversation(
                ConversationId.Room("r 1"), 2, 7, 9, 1, 3, null,
                listOf(
                    CachedMessage("c1", "bob", false, "multi\nline ü", 9, 1000, Delivery.RECEIVED),
                    CachedMessage("c2", "alice", true, "", null, 1001, Delivery.FAILED, "refused"),
                ),
            ),
        ),
    )
    val back = FileMessageCache.decode(FileMessageCache.encode(snap).lines())
    check(back == snap) { "cache round trip: $back" }
    println("ok   formatting, sign-in form checks, cache format (no network)")
}

fun main(args: Array<String>) {
    val bin = args.getOrNull(0) ?: error("usage: CoreTest <tether-server binary>")
    val t0 = System.currentTimeMillis()
    val root = Files.createTempDirectory("tether-demo-core").toFile()
    val node = Node(bin)
    var failed: Throwable? = null
    val vms = ArrayList<Vm>()
    try {
        unitChecks()
        node.start()
        val pem = node.certPem
        val alice = Vm("alice", File(root, "alice"), "alice-phone").also { vms += it }
        val bob = Vm("bob", File(root, "bob"), "bob-phone").also { vms += it }
        val lobby = ConversationId.Room("lobby")
        val aliceChat = ConversationId.Direct("alice")
        val bobChat = ConversationId.Direct("bob")

        step("a form with a mistake shows its error and stays signed out") {
            alice.store.signIn(SignInForm(node.quic.substringBefore(':'), CredentialKind.TICKET, "x"))
            val s = alice.now
            check(s.phase == SignInPhase.SIGNED_OUT && s.signInError!!.contains("host:port")) { describe(s) }
        }

        step("alice signs in with a ticket at host:port, bob with a JWT through the registry URL") {
            alice.store.signIn(SignInForm(node.quic, CredentialKind.TICKET, node.ticket("alice"), "localhost", pem))
            bob.store.signIn(SignInForm("http://${node.admin}/eureka/", CredentialKind.TOKEN, jwt("bob"), "localhost", pem))
            for (vm in listOf(alice, bob)) {
                val s = vm.await("online") { it.phase == SignInPhase.SIGNED_IN && it.banner.kind == BannerKind.ONLINE && it.user == vm.name }
                check(s.banner.text == "Online" && s.conversations.isEmpty() && s.signInError == null) { describe(s) }
                val phases = vm.history().map { it.phase }.distinct().dropWhile { it == SignInPhase.SIGNED_OUT }
                check(phases == listOf(SignInPhase.SIGNING_IN, SignInPhase.SIGNED_IN)) { "phases $phases" }
            }
        }

        step("1:1: alice opens a chat with bob (presence dot online) and sends: pending -> acknowledged") {
            alice.store.startDirect("bob")
            var s = alice.await("bob's presence") { it.row(bobChat)?.online == true }
            check(s.chat?.id == bobChat && s.chat!!.subtitle == "online" && s.row(bobChat)!!.lastMessage == null) { describe(s) }
            val id = alice.store.send("hi bob")!!
            check(alice.messages().single { it.clientMsgId == id }.let { it.delivery == Delivery.PENDING && it.status == "Sending…" }) {
                describe(alice.now)
            }
            s = alice.await("ack") { st -> alice.messages(st).any { it.clientMsgId == id && it.delivery == Delivery.ACKNOWLEDGED } }
            check(alice.deliveries(id) == listOf(Delivery.PENDING, Delivery.ACKNOWLEDGED)) { "states ${alice.deliveries(id)}" }
            val m = alice.messages(s).single()
            check(m.status == "Sent" && m.seq != null && m.mine) { describe(s) }
            val row = s.row(bobChat)!!
            check(row.lastMessage == "You: hi bob" && row.unread == 0 && row.lastDelivery == Delivery.ACKNOWLEDGED) { describe(s) }
        }

        step("bob's list: the new conversation counts unread (1, then 3); opening it sets 0; his reply is acknowledged") {
            var s = bob.await("alice's first message") { it.row(aliceChat)?.unread == 1 }
            check(s.row(aliceChat)!!.lastMessage == "hi bob" && s.chat == null) { describe(s) }
            alice.store.send("how are you?")
            alice.store.send("see you in the lobby")
            s = bob.await("3 unread") { it.row(aliceChat)?.unread == 3 }
            check(s.row(aliceChat)!!.lastMessage == "see you in the lobby") { describe(s) }
            bob.store.openConversation(aliceChat)
            s = bob.now
            check(s.row(aliceChat)!!.unread == 0) { describe(s) }
            check(bob.messages(s).map { it.text } == listOf("hi bob", "how are you?", "see you in the lobby")) { describe(s) }
            check(bob.messages(s).all { !it.mine && it.delivery == Delivery.RECEIVED && it.from == "alice" }) { describe(s) }
            val id = bob.store.send("hello alice")!!
            bob.await("ack") { st -> bob.messages(st).any { it.clientMsgId == id && it.delivery == Delivery.ACKNOWLEDGED } }
            check(bob.deliveries(id) == listOf(Delivery.PENDING, Delivery.ACKNOWLEDGED)) { "states ${bob.deliveries(id)}" }
            // alice has the chat open: the reply shows in it, unread stays 0, in inbox order.
            s = alice.await("the reply") { st -> alice.messages(st).any { it.text == "hello alice" } }
            check(alice.messages(s).map { it.text } == listOf("hi bob", "how are you?", "see you in the lobby", "hello alice")) { describe(s) }
            check(s.row(bobChat)!!.unread == 0 && s.row(bobChat)!!.lastMessage == "hello alice") { describe(s) }
        }

        step("rooms: alice joins (1 online), bob joins: an enter line and 2 online on both sides") {
            alice.store.joinRoom("lobby")
            var s = alice.await("joined") { it.chat?.id == lobby && it.chat!!.onlineCount == 1L }
            check(s.chat!!.members == 1L && s.chat!!.subtitle == "1 online · 1 member" && s.conversations.first().id == lobby) { describe(s) }
            bob.store.joinRoom("lobby")
            s = alice.await("bob entered") { st -> st.chat?.rows?.any { it is ChatRow.Line && it.text == "bob joined" } == true && st.chat!!.onlineCount == 2L }
            check(s.chat!!.members == 2L && s.chat!!.subtitle == "2 online · 2 members" && s.row(lobby)!!.onlineCount == 2L) { describe(s) }
            bob.await("bob's room") { it.chat?.id == lobby && it.chat!!.onlineCount == 2L }
        }

        step("room messages: pending -> acknowledged; unread counts and list order follow the news; opening reads them") {
            val id = bob.store.send("hi lobby")!!
            bob.await("ack") { st -> bob.messages(st).any { it.clientMsgId == id && it.delivery == Delivery.ACKNOWLEDGED } }
            check(bob.deliveries(id) == listOf(Delivery.PENDING, Delivery.ACKNOWLEDGED)) { "states ${bob.deliveries(id)}" }
            var s = alice.await("hi lobby") { st -> alice.messages(st).any { it.text == "hi lobby" && it.from == "bob" } }
            check(s.row(lobby)!!.unread == 0) { describe(s) }
            alice.store.closeConversation()
            bob.store.send("lobby 2")
            bob.store.send("lobby 3")
            s = alice.await("2 unread in the lobby") { it.row(lobby)?.unread == 2 }
            check(s.chat == null && s.conversations.map { it.id } == listOf(lobby, bobChat)) { describe(s) }
            check(s.row(lobby)!!.lastMessage == "bob: lobby 3") { describe(s) }
            bob.store.openConversation(aliceChat)
            bob.store.send("psst")
            s = alice.await("1 unread from bob") { it.row(bobChat)?.unread == 1 }
            check(s.conversations.map { it.id } == listOf(bobChat, lobby) && s.row(lobby)!!.unread == 2) { describe(s) }
            check(s.row(bobChat)!!.lastMessage == "psst") { describe(s) }
            alice.store.openConversation(lobby)
            s = alice.now
            check(s.row(lobby)!!.unread == 0 && s.row(bobChat)!!.unread == 1) { describe(s) }
            check(alice.messages(s).map { it.text } == listOf("hi lobby", "lobby 2", "lobby 3")) { describe(s) }
        }

        step("room history paging: 25 earlier messages come in pages of 10, in order, without counting as unread") {
            val history = ConversationId.Room("history")
            bob.store.joinRoom("history")
            bob.await("bob in #history") { it.chat?.id == history && it.chat!!.members == 1L }
            val ids = (1..25).map { bob.store.send("h$it")!! }
            bob.await("25 acks") { st -> bob.messages(st).count { it.clientMsgId in ids && it.delivery == Delivery.ACKNOWLEDGED } == 25 }
            alice.store.joinRoom("history")
            var s = alice.await("joined #history") { it.chat?.id == history && it.chat!!.members == 2L }
            check(alice.messages(s).isEmpty() && s.chat!!.canLoadOlder) { describe(s) }
            for (expected in listOf(16..25, 6..25, 1..25)) {
                alice.store.loadOlder()
                check(alice.now.chat!!.loadingOlder || alice.messages().size == expected.count()) { describe(alice.now) }
                s = alice.await("history down to h${expected.first}") { st -> alice.messages(st).size == expected.count() && !st.chat!!.loadingOlder }
                check(alice.messages(s).map { it.text } == expected.map { "h$it" }) { describe(s) }
                check(alice.messages(s).map { it.seq } == expected.map { it.toLong() }) { describe(s) }
            }
            check(!s.chat!!.canLoadOlder) { "no more history: ${describe(s)}" }
            alice.store.closeConversation()
            s = alice.now
            check(s.row(history)!!.unread == 0 && s.row(history)!!.lastMessage == "bob: h25") { describe(s) }
        }

        step("bob leaves the lobby: alice sees a quit line and 1 online; bob's list drops the room") {
            alice.store.openConversation(lobby)
            bob.store.leaveRoom("lobby")
            val s = alice.await("bob left") { st -> st.chat?.rows?.any { it is ChatRow.Line && it.text == "bob left" } == true }
            check(s.chat!!.onlineCount == 1L && s.chat!!.members == 1L) { describe(s) }
            val rows = s.chat!!.rows
            check(rows.indexOfFirst { it is ChatRow.Line && it.text == "bob joined" } < rows.indexOfFirst { it is ChatRow.Msg }) { "enter line before the messages: ${describe(s)}" }
            check(rows.last() is ChatRow.Line) { "quit line after the messages: ${describe(s)}" }
            bob.await("lobby gone") { it.row(lobby) == null }
        }

        step("pause in the background: banner Paused; a message meanwhile arrives once after resume; a network change stays online") {
            alice.store.onBackground()
            alice.await("paused") { it.banner.kind == BannerKind.PAUSED && it.banner.text == "Paused in the background" }
            bob.store.openConversation(aliceChat)
            val id = bob.store.send("while you were away")!!
            bob.await("ack") { st -> bob.messages(st).any { it.clientMsgId == id && it.delivery == Delivery.ACKNOWLEDGED } }
            Thread.sleep(300)
            check(alice.now.row(bobChat)!!.lastMessage == "psst") { "delivered while paused: ${describe(alice.now)}" }
            alice.store.onForeground()
            var s = alice.await("back online with the message") { it.banner.kind == BannerKind.ONLINE && it.row(bobChat)?.lastMessage == "while you were away" }
            check(s.row(bobChat)!!.unread == 2) { describe(s) }
            alice.store.onNetworkChanged()
            bob.store.send("after the network change")
            s = alice.await("message after the network change") { it.row(bobChat)?.lastMessage == "after the network change" }
            check(s.banner.kind == BannerKind.ONLINE && s.row(bobChat)!!.unread == 3) { describe(s) }
            alice.store.openConversation(bobChat)
            s = alice.now
            val texts = alice.messages(s).map { it.text }
            check(texts.count { it == "while you were away" } == 1 && texts.takeLast(2) == listOf("while you were away", "after the network change")) { describe(s) }
        }

        step("server restart: banners go offline with the next retry and back online; a message written meanwhile goes pending -> acknowledged") {
            val fromA = alice.history().size - 1
            val fromB = bob.history().size - 1
            node.kill()
            for (vm in listOf(alice, bob)) {
                val s = vm.await("backing off") { it.banner.kind == BannerKind.BACKOFF }
                check(s.banner.retryAtMs != null && s.banner.text.startsWith("Offline · retrying")) { describe(s) }
            }
            val id = alice.store.send("written while the node was down")!!
            Thread.sleep(500)
            check(alice.messages().single { it.clientMsgId == id }.delivery == Delivery.PENDING) { describe(alice.now) }
            node.start()
            for (vm in listOf(alice, bob)) vm.await("online again", 30_000) { it.banner.kind == BannerKind.ONLINE }
            alice.await("ack after the restart") { st -> alice.messages(st).any { it.clientMsgId == id && it.delivery == Delivery.ACKNOWLEDGED } }
            check(alice.deliveries(id) == listOf(Delivery.PENDING, Delivery.ACKNOWLEDGED)) { "states ${alice.deliveries(id)}" }
            bob.await("delivered after the restart") { st -> bob.messages(st).count { it.text == "written while the node was down" } == 1 }
            for ((vm, from) in listOf(alice to fromA, bob to fromB)) {
                val kinds = vm.banners(from)
                check(kinds.first() == BannerKind.ONLINE && kinds.last() == BannerKind.ONLINE && BannerKind.BACKOFF in kinds) { "${vm.name} banners $kinds" }
                check(kinds.indexOf(BannerKind.BACKOFF) < kinds.lastIndexOf(BannerKind.ONLINE)) { "${vm.name} banners $kinds" }
            }
        }

        val bob2 = Vm("bob", File(root, "bob2"), "bob-phone-2").also { vms += it }
        step("a second phone signs in as bob: the first one is kicked (banner); the new phone shows the inbox with alice, own copies as sent") {
            bob2.store.signIn(SignInForm(node.quic, CredentialKind.TOKEN, jwt("bob"), "localhost", pem))
            bob2.await("online") { it.banner.kind == BannerKind.ONLINE }
            val s = bob.await("kicked") { it.banner.kind == BannerKind.KICKED }
            check(s.banner.text.contains("another device")) { describe(s) }
            check(alice.now.row(bobChat)!!.online == true) { describe(alice.now) }
            // A new device gets the user's inbox from the start: alice's messages and bob's own
            // (sent from the first phone: shown as his, acknowledged). Events of a login that
            // happens before the listener is registered are not replayed by the SDK, so only
            // the tail of the backlog is certain: what shows must be a suffix, in order.
            var b = bob2.await("the inbox backlog") { it.row(aliceChat)?.lastMessage == "written while the node was down" }
            val unread = b.row(aliceChat)!!.unread
            bob2.store.openConversation(aliceChat)
            b = bob2.now
            val msgs = bob2.messages(b)
            val expected = listOf(
                "hi bob", "how are you?", "see you in the lobby", "hello alice", "psst", "while you were away",
                "after the network change", "written while the node was down",
            )
            check(msgs.isNotEmpty() && expected.takeLast(msgs.size) == msgs.map { it.text }) { describe(b) }
            check(msgs.all { it.mine == (it.from == "bob") && it.delivery == (if (it.mine) Delivery.ACKNOWLEDGED else Delivery.RECEIVED) }) { describe(b) }
            check(unread == msgs.count { !it.mine } && b.row(aliceChat)!!.unread == 0) { "unread $unread: ${describe(b)}" }
            if (msgs.size < expected.size) println("note: the new phone's listener missed ${expected.size - msgs.size} backlog message(s) delivered before it was registered")
            bob2.store.closeConversation()
        }

        step("a refused credential: the banner says the sign-in was refused") {
            val carol = Vm("carol", File(root, "carol"), "carol-phone").also { vms += it }
            carol.store.signIn(SignInForm(node.quic, CredentialKind.TICKET, "not-a-ticket", "localhost", pem))
            val s = carol.await("refused") { it.banner.kind == BannerKind.AUTH_FAILED }
            check(s.banner.text.startsWith("Sign-in refused: the ticket is not valid")) { describe(s) }
            runBlocking { carol.store.shutdown() }
        }

        val alice2 = Vm("alice", File(root, "alice"), "alice-phone")
        step("the app restarts while the node is down: the cached list and the SDK's outbox show at once; online again, the message is acknowledged") {
            node.kill()
            alice.store.openConversation(bobChat)
            val id = alice.store.send("written before the app closed")!!
            Thread.sleep(300)
            check(alice.messages().single { it.clientMsgId == id }.delivery == Delivery.PENDING) { describe(alice.now) }
            val before = alice.now.conversations.map { Triple(it.id, it.lastMessage, it.unread) }
            runBlocking { alice.store.shutdown() }
            vms += alice2
            alice2.store.restore()
            var s = alice2.now
            check(s.phase == SignInPhase.SIGNING_IN && s.user == "alice" && s.chat == null) { describe(s) }
            check(s.conversations.map { Triple(it.id, it.lastMessage, it.unread) } == before) { "cached list: ${describe(s)} vs $before" }
            check(s.conversations.first().id == bobChat && s.row(bobChat)!!.lastDelivery == Delivery.PENDING) { describe(s) }
            // The SDK's outbox holds it too (it is what gets sent): still pending once the store has merged it.
            s = alice2.await("signed in (node down)") { it.phase == SignInPhase.SIGNED_IN }
            Thread.sleep(300)
            check(alice2.now.row(bobChat)!!.lastDelivery == Delivery.PENDING) { describe(alice2.now) }
            node.start()
            s = alice2.await("online and acknowledged after the restart", 30_000) {
                it.banner.kind == BannerKind.ONLINE && it.row(bobChat)?.lastDelivery == Delivery.ACKNOWLEDGED
            }
            check(s.user == "alice") { describe(s) }
            val b = bob2.await("bob's other phone gets it") { it.row(aliceChat)?.lastMessage == "written before the app closed" }
            check(b.row(aliceChat)!!.unread == 1) { describe(b) }
            bob2.store.openConversation(aliceChat)
            bob2.store.send("welcome back")
            s = alice2.await("a new message") { it.row(bobChat)?.lastMessage == "welcome back" }
            check(s.conversations.first().id == bobChat && s.row(bobChat)!!.unread == 1) { describe(s) }
            alice2.store.openConversation(bobChat)
            val texts = alice2.messages().map { it.text }
            check(texts.takeLast(2) == listOf("written before the app closed", "welcome back") && texts.count { it == "written before the app closed" } == 1) {
                describe(alice2.now)
            }
        }

        step("bob signs out on both phones: presence dot offline for alice; the signed-out store forgets the account") {
            runBlocking { bob.store.signOut() }
            runBlocking { bob2.store.signOut() }
            val s = alice2.await("bob offline") { it.row(bobChat)?.online == false }
            check(s.row(bobChat) != null) { describe(s) }
            val b = bob2.now
            check(b.phase == SignInPhase.SIGNED_OUT && b.conversations.isEmpty() && b.banner.kind == BannerKind.SIGNED_OUT) { describe(b) }
            check(!File(bob2.dataDir, "tether-state").exists()) { "state dir left behind" }
        }
    } catch (t: Throwable) {
        failed = t
    } finally {
        runBlocking { for (vm in vms) runCatching { vm.store.shutdown() } }
        node.kill()
    }
    val secs = (System.currentTimeMillis() - t0) / 1000.0
    val f = failed
    if (f != null) {
        println("FAIL android-demo core: after $steps steps: $f")
        f.printStackTrace(System.out)
        println("server log: " + File(node.dir, "server.log").let { if (it.exists()) it.readText().takeLast(4000) else "(none)" })
        exitProcess(1)
    }
    root.deleteRecursively()
    node.dir.deleteRecursively()
    println("android-demo core: $steps steps passed against a real node in %.1f s".format(secs))
    exitProcess(0)
}
