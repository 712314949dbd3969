// The app's own small cache for display (the SDK owns the outbox and the cursors): the
// conversation list and the last messages of each conversation, and the last sign-in form.
// Plain files written off the caller's thread, atomically (temporary file, rename).
package dev.tether.demo.core

import java.io.File
import java.util.Base64
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicReference

interface MessageCache {
    fun load(): CacheSnapshot?

    /** Saves in the background; later calls supersede pending ones. */
    fun save(snapshot: CacheSnapshot)

    fun loadSignIn(): SignInForm?

    fun saveSignIn(form: SignInForm)

    /** Waits until what was saved is on disk. */
    fun flush()

    /** Forgets everything (sign-out). */
    fun clear()
}

class FileMessageCache(private val dir: File) : MessageCache {
    private val file = File(dir, "conversations.txt")
    private val signInFile = File(dir, "sign-in.txt")
    private val latest = AtomicReference<CacheSnapshot?>()
    private val writer = Executors.newSingleThreadExecutor { r -> Thread(r, "tether-demo-cache").apply { isDaemon = true } }

    override fun save(snapshot: CacheSnapshot) {
        if (latest.getAndSet(snapshot) == null) {
            writer.execute { latest.getAndSet(null)?.let { write(file, encode(it)) } }
        }
    }

    override fun flush() {
        writer.submit {}.get(10, TimeUnit.SECONDS)
    }

    override fun clear() {
        latest.set(null)
        flush()
        file.delete()
        signInFile.delete()
    }

    override fun load(): CacheSnapshot? = if (file.exists()) runCatching { decode(file.readLines()) }.getOrNull() else null

    override fun saveSignIn(form: SignInForm) {
        val lines = listOf(
            "address " + b64(form.address),
            "kind " + form.kind.name,
            "credential " + b64(form.credential),
            "serverName " + b64(form.serverName),
            "pem " + b64(form.pinnedCertPem),
        )
        writer.execute { write(signInFile, lines.joinToString("\n", postfix = "\n")) }
    }

    override fun loadSignIn(): SignInForm? {
        if (!signInFile.exists()) return null
        return runCatching {
            val m = signInFile.readLines().filter { it.isNotBlank() }.associate { it.substringBefore(' ') to it.substringAfter(' ', "") }
            SignInForm(
                address = unb64(m.getValue("address")),
                kind = CredentialKind.valueOf(m.getValue("kind")),
                credential = unb64(m.getValue("credential")),
                serverName = unb64(m["serverName"] ?: ""),
                pinnedCertPem = unb64(m["pem"] ?: ""),
            )
        }.getOrNull()
    }

    private fun write(target: File, text: String) {
        dir.mkdirs()
        val tmp = File(dir, target.name + ".tmp")
        tmp.writeText(text)
        if (!tmp.renameTo(target)) {
            target.delete()
            tmp.renameTo(target)
        }
    }

    companion object {
        private const val HEADER = "tether-demo-cache 1"

        private fun b64(s: String): String = Base64.getEncoder().encodeToString(s.toByteArray(Charsets.UTF_8))

        private fun unb64(s: String): String = String(Base64.getDecoder().decode(s), Charsets.UTF_8)

        private fun num(v: Long?): String = v?.toString() ?: "-"

        private fun numOrNull(s: String): Long? = if (s == "-") null else s.toLong()

        fun encode(s: CacheSnapshot): String = buildString {
            append(HEADER).append('\n')
            append("user ").append(s.user?.let(::b64) ?: "-").append('\n')
            append("tick ").append(s.tick).append('\n')
            for (c in s.conversations) {
                append("conv ${b64(c.id.key)} ${c.unread} ${c.activity} ${c.maxSeq} ${c.floor} ${num(c.members)} ${num(c.online)}\n")
                for (m in c.messages) {
                    append(
                        "msg ${b64(c.id.key)} ${b64(m.clientMsgId)} ${b64(m.from)} ${if (m.mine) 1 else 0} ${num(m.seq)} ${m.ts} " +
                            "${m.delivery.name} ${b64(m.text)} ${m.error?.let(::b64) ?: "-"}\n",
                    )
                }
            }
        }

        fun decode(lines: List<String>): CacheSnapshot? {
            if (lines.firstOrNull() != HEADER) return null
            var user: String? = null
            var tick = 0L
            val convs = LinkedHashMap<String, CachedConversation>()
            val msgs = HashMap<String, MutableList<CachedMessage>>()
            for (line in lines.drop(1)) {
                val f = line.split(' ')
                when (f[0]) {
                    "user" -> user = if (f[1] == "-") null else unb64(f[1])
                    "tick" -> tick = f[1].toLong()
                    "conv" -> {
                        val key = unb64(f[1])
                        val id = ConversationId.fromKey(key) ?: continue
                        convs[key] = CachedConversation(
                            id, f[2].toInt(), f[3].toLong(), f[4].toLong(), f[5].toLong(), numOrNull(f[6]), numOrNull(f[7]), emptyList(),
                        )
                    }
                    "msg" -> msgs.getOrPut(unb64(f[1])) { ArrayList() } += CachedMessage(
                        clientMsgId = unb64(f[2]),
                        from = unb64(f[3]),
                        mine = f[4] == "1",
                        seq = numOrNull(f[5]),
                        ts = f[6].toLong(),
                        delivery = Delivery.valueOf(f[7]),
                        text = unb64(f[8]),
                        error = if (f[9] == "-") null else unb64(f[9]),
                    )
                }
            }
            return CacheSnapshot(user, tick, convs.map { (key, c) -> c.copy(messages = msgs[key].orEmpty()) })
        }
    }
}
