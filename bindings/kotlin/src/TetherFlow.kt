// A thin Kotlin adapter over the generated bindings: it only adapts (no logic).
package uniffi.tether_ffi

import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow

/**
 * The client's events as a cold [Flow]: collecting it registers a listener, cancelling the
 * collection stops it. Events are buffered without limit, so a slow collector never stalls the
 * client (every message is still handed over exactly once, in order).
 */
fun TetherClient.events(): Flow<Event> = callbackFlow {
    val registration = addListener(eventListener { trySend(it) })
    awaitClose { registration.stop() }
}.buffer(Channel.UNLIMITED)

/**
 * An [EventListener] from a function called once per event, in order, on the listener's
 * thread. The SDK hands events over in batches (one call per burst); this unpacks them. The
 * listener's thread is a native thread: it is kept attached to the JVM
 * (`Native.detach(false)`), else JNA would attach and detach it around every batch.
 */
fun eventListener(onEvent: (Event) -> Unit): EventListener = object : EventListener {
    override fun onEvents(events: List<Event>) {
        com.sun.jna.Native.detach(false)
        events.forEach(onEvent)
    }
}

/** A credential provider from a Kotlin function (e.g. one that asks the app's backend for a JWT). */
fun credentialProvider(get: () -> Credential?): CredentialProvider = object : CredentialProvider {
    override fun credential(): Credential? = get()
}
