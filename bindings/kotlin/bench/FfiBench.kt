// The Kotlin side of the FFI overhead measurement (bindings/scripts/kotlin-bench): the same
// calls as `tether-bench ffi` makes on the Rust API, made through the generated bindings.
package tether.bench

import java.util.concurrent.atomic.AtomicLong
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import tether.test.Node
import tether.test.config
import tether.test.jwt
import uniffi.tether_ffi.*
import uniffi.tether_ffi.Target

class Figures(val sendUs: Double, val batchUs: Double, val stateUs: Double, val eventUs: Double, val awaitUs: Double)

suspend fun pause(client: TetherClient) {
    client.pause()
    withTimeout(10_000) { while (client.state() != ConnectionState.Paused) delay(5) }
}

suspend fun measure(node: Node, user: String, n: Int): Figures {
    val client = startClient(config(node, "$user-bench").copy(timing = null), credentialProvider { Credential.Token(jwt(user)) })
    client.waitOnline()
    pause(client)
    val acked = AtomicLong()
    val registration = client.addListener(eventListener { if (it is Event.SendAcked) acked.incrementAndGet() })
    // One send call per message, then the acks through the listener (as `tether-bench ffi`).
    val t0 = System.nanoTime()
    val handles = ArrayList<SendHandle>(n)
    for (i in 0 until n) handles.add(client.sendText("ffi-sink", "m$i"))
    val sendUs = (System.nanoTime() - t0) / 1000.0 / n
    val t1 = System.nanoTime()
    client.resume()
    withTimeout(120_000) { while (acked.get() < n) delay(1) }
    val eventUs = (System.nanoTime() - t1) / 1000.0 / n
    // The same acks awaited through their handles (suspend calls on completed handles).
    val t2 = System.nanoTime()
    handles.forEach { it.ack() }
    val awaitUs = (System.nanoTime() - t2) / 1000.0 / n
    // The same messages in batches of 100 (one call per batch), and the floor: a call that
    // does nothing but read the state.
    client.waitOnline()
    pause(client)
    val t3 = System.nanoTime()
    for (b in 0 until n / 100) {
        client.sendBatch(List(100) { OutgoingMessage(Target.User("ffi-sink"), "text/plain", "b$b-$it".toByteArray()) })
    }
    val batchUs = (System.nanoTime() - t3) / 1000.0 / (n / 100 * 100)
    val t4 = System.nanoTime()
    for (i in 0 until n) client.state()
    val stateUs = (System.nanoTime() - t4) / 1000.0 / n
    client.resume()
    withTimeout(120_000) { while (acked.get() < n + n / 100 * 100) delay(1) }
    registration.stop()
    client.stop()
    return Figures(sendUs, batchUs, stateUs, eventUs, awaitUs)
}

fun main(args: Array<String>) = runBlocking {
    // The same node settings as `tether-bench ffi`: no send rate limit in the way.
    val node = Node(args[0], listOf("--send-rate", "100000000", "--send-burst", "100000000"))
    node.start()
    val n = args.getOrNull(1)?.toInt() ?: 20_000
    measure(node, "ffi-warm", 20000)
    val f = measure(node, "ffi-kotlin", n)
    println(
        "ffi kotlin messages=$n send_call_us=%.2f send_batch100_us_per_msg=%.2f state_call_us=%.2f ack_event_us=%.2f await_done_handle_us=%.2f"
            .format(f.sendUs, f.batchUs, f.stateUs, f.eventUs, f.awaitUs),
    )
    node.kill()
}
