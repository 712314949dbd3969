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
    val registration = addListener(object : EventListener {
        override fun onEvent(event: Event) {
            trySend(event)
        }
    })
    awaitClose { registration.stop() }
}.buffer(Channel.UNLIMITED)

/** A credential provider from a Kotlin function (e.g. one that asks the app's backend for a JWT). */
fun credentialProvider(get: () -> Credential?): CredentialProvider = object : CredentialProvider {
    override fun credential(): Credential? = get()
}
