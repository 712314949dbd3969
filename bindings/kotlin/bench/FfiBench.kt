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

suspend fun measure(node: Node, user: String, n: Int): Pair<Double, Double> {
    val client = startClient(config(node, "$user-bench").copy(timing = null), credentialProvider { Credential.Token(jwt(user)) })
    client.waitOnline()
    client.pause()
    withTimeout(10_000) { while (client.state() != ConnectionState.Paused) delay(5) }
    val acked = AtomicLong()
    val registration = client.addListener(object : EventListener {
        override fun onEvent(event: Event) {
            com.sun.jna.Native.detach(false)
            if (event is Event.SendAcked) acked.incrementAndGet()
        }
    })
    val t0 = System.nanoTime()
    val handles = ArrayList<SendHandle>(n)
    for (i in 0 until n) handles.add(client.sendText("ffi-sink", "m$i"))
    val sendUs = (System.nanoTime() - t0) / 1000.0 / n
    val t1 = System.nanoTime()
    client.resume()
    withTimeout(120_000) { while (acked.get() < n) delay(1) }
    val eventUs = (System.nanoTime() - t1) / 1000.0 / n
    // The same acks awaited through the handles (suspend calls), for comparison.
    val t2 = System.nanoTime()
    handles.forEach { it.ack() }
    println("  awaiting the $n acks through their handles afterwards: %.2f us per handle".format((System.nanoTime() - t2) / 1000.0 / n))
    registration.stop()
    client.stop()
    return Pair(sendUs, eventUs)
}

fun main(args: Array<String>) = runBlocking {
    // The same node settings as `tether-bench ffi`: no send rate limit in the way.
    val node = Node(args[0], listOf("--send-rate", "100000000", "--send-burst", "100000000"))
    node.start()
    val n = args.getOrNull(1)?.toInt() ?: 20_000
    measure(node, "ffi-warm", 20000)
    val (sendUs, eventUs) = measure(node, "ffi-kotlin", n)
    println("ffi kotlin messages=$n send_call_us=%.2f ack_event_us=%.2f".format(sendUs, eventUs))
    node.kill()
}
