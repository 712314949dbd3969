// The app's view model: one per signed-in account. It starts the SDK client, feeds its events
// to the ChatModel, exposes the screen state as a StateFlow, and forwards the user's actions
// and the platform's signals (foreground/background, network change) to the SDK.
// Plain Kotlin + kotlinx.coroutines, no Android imports: the Android glue (DemoApp) and the
// Compose screens call it; android-demo/scripts/core-test drives two of them on the JVM.
package dev.tether.demo.core

import java.io.File
import java.time.ZoneId
import java.util.concurrent.CopyOnWriteArrayList
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.launch
import uniffi.tether_ffi.ConnectionState
import uniffi.tether_ffi.Event
import uniffi.tether_ffi.EventListener
import uniffi.tether_ffi.ListenerRegistration
import uniffi.tether_ffi.Target
import uniffi.tether_ffi.TetherClient
import uniffi.tether_ffi.TetherException
import uniffi.tether_ffi.credentialProvider
import uniffi.tether_ffi.startClient

class TetherStore(
    private val device: DeviceProfile,
    private val cache: MessageCache = FileMessageCache(File(device.dataDir, "display-cache")),
    private val clock: () -> Long = System::currentTimeMillis,
    private val zone: ZoneId = ZoneId.systemDefault(),
    pageSize: Int = 20,
) {
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    private val lock = Any()
    private val model = ChatModel(pageSize)
    private var client: TetherClient? = null
    private var registration: ListenerRegistration? = null
    private var phase = SignInPhase.SIGNED_OUT
    private var signInError: String? = null
    private var lastForm: SignInForm? = null
    private var paused = false
    private val observers = CopyOnWriteArrayList<(AppState) -> Unit>()
    private val _state = MutableStateFlow(model.render(phase, null, null, clock(), zone))

    /** The screen state; every change is published here (the Compose screens collect it). */
    val state: StateFlow<AppState> = _state.asStateFlow()

    /** Calls [f] with every state published, synchronously and in order (tests record the steps). */
    fun observe(f: (AppState) -> Unit): AutoCloseable {
        observers += f
        return AutoCloseable { observers -= f }
    }

    private fun publish() {
        val s = model.render(phase, signInError, lastForm, clock(), zone)
        _state.value = s
        observers.forEach { it(s) }
    }

    private fun persist() {
        cache.save(model.snapshot())
    }

    /**
     * At app start: shows the cached conversations and signs in again with the last form (a
     * ticket is not used again: the SDK logs in with the resume token in its state dir).
     */
    fun restore() {
        val form = cache.loadSignIn() ?: return
        synchronized(lock) {
            if (phase != SignInPhase.SIGNED_OUT) return
            lastForm = form
            cache.load()?.let { model.restore(it) }
        }
        signIn(form)
    }

    fun signIn(form: SignInForm) {
        synchronized(lock) {
            if (phase != SignInPhase.SIGNED_OUT) return
            lastForm = form
            val problem = form.problem()
            if (problem != null) {
                signInError = problem
                publish()
                return
            }
            signInError = null
            phase = SignInPhase.SIGNING_IN
            form.tokenSubject()?.let { model.assumeUser(it) }
            publish()
        }
        scope.launch { connect(form) }
    }

    private suspend fun connect(form: SignInForm) {
        val c = try {
            val credential = form.credential()
            startClient(form.clientConfig(device), credentialProvider { credential })
        } catch (e: Exception) {
            synchronized(lock) {
                phase = SignInPhase.SIGNED_OUT
                signInError = Format.error(e)
                publish()
            }
            return
        }
        // The SDK hands events over in batches on a native thread of its own; one batch is
        // applied under the lock and published once. (As eventListener{} in TetherFlow.kt does,
        // the thread stays attached to the JVM.)
        val listener = object : EventListener {
            override fun onEvents(events: List<Event>) {
                com.sun.jna.Native.detach(false)
                onSdkEvents(c, events)
            }
        }
        synchronized(lock) {
            client = c
            registration = c.addListener(listener)
            model.apply(Event.State(c.state()), clock())
            phase = SignInPhase.SIGNED_IN
            cache.saveSignIn(form)
            publish()
        }
        try {
            val pending = c.outbox()
            synchronized(lock) {
                if (client !== c) return
                model.mergeOutbox(pending)
                publish()
                persist()
            }
            subscribePresence(c, model.directPeers())
            // Events before addListener are not replayed: if the login happened in between, the
            // user is not known yet; logging in again (pause + resume) tells it.
            val unknown = synchronized(lock) { model.me == null && c.state() == ConnectionState.Online }
            if (unknown) {
                c.pause()
                c.resume()
            }
        } catch (e: TetherException) {
            synchronized(lock) {
                model.notice = Format.error(e)
                publish()
            }
        }
    }

    private fun onSdkEvents(c: TetherClient, events: List<Event>) {
        synchronized(lock) {
            if (client !== c) return
            val before = model.me
            val now = clock()
            events.forEach { model.apply(it, now) }
            publish()
            persist()
            if (before == null && model.me != null) {
                scope.launch { subscribePresence(c, synchronized(lock) { model.directPeers() }) }
            }
        }
    }

    private fun subscribePresence(c: TetherClient, users: List<String>) {
        if (users.isEmpty()) return
        try {
            c.subscribePresence(users)
        } catch (_: TetherException) {
        }
    }

    // --- the user's actions ---------------------------------------------------------------

    fun openConversation(id: ConversationId) {
        synchronized(lock) {
            model.open(id)
            publish()
            persist()
        }
    }

    fun closeConversation() {
        synchronized(lock) {
            model.close()
            publish()
        }
    }

    /** Opens a 1:1 conversation with [user] (new or existing) and watches the user's presence. */
    fun startDirect(user: String) {
        val u = user.trim()
        val c = synchronized(lock) {
            if (u.isEmpty() || u == model.me) {
                model.notice = if (u.isEmpty()) "Enter a user id" else "That is you"
                publish()
                return
            }
            model.open(ConversationId.Direct(u))
            publish()
            persist()
            client
        } ?: return
        subscribePresence(c, listOf(u))
    }

    /** Joins a room (membership is kept by the server until [leaveRoom]) and opens it. */
    fun joinRoom(room: String) {
        val r = room.trim().removePrefix("#")
        val c = synchronized(lock) {
            if (r.isEmpty()) {
                model.notice = "Enter a room name"
                publish()
                return
            }
            model.open(ConversationId.Room(r))
            publish()
            client
        } ?: return
        scope.launch {
            try {
                val joined = c.joinRoom(r)
                synchronized(lock) {
                    model.onJoined(joined)
                    publish()
                    persist()
                }
            } catch (e: TetherException) {
                synchronized(lock) {
                    model.notice = "Could not join #$r: " + Format.error(e)
                    publish()
                }
            }
        }
    }

    fun leaveRoom(room: String) {
        val c = synchronized(lock) { client } ?: return
        scope.launch {
            try {
                c.leaveRoom(room)
                // The SDK's RoomLeft event removes the conversation.
            } catch (e: TetherException) {
                synchronized(lock) {
                    model.notice = "Could not leave #$room: " + Format.error(e)
                    publish()
                }
            }
        }
    }

    /**
     * Sends [text] to the open conversation. It shows at once as pending (queued in the SDK's
     * outbox, which survives restarts) and turns acknowledged when the server stored it.
     * Returns the message's id, or null when no conversation is open.
     */
    fun send(text: String): String? {
        if (text.isBlank()) return null
        synchronized(lock) {
            val c = client ?: return null
            val id = model.openId ?: return null
            val target = when (id) {
                is ConversationId.Direct -> Target.User(id.user)
                is ConversationId.Room -> Target.Room(id.room)
            }
            // Under the lock: the ack event (applied under it too) cannot overtake this record.
            val clientMsgId = c.send(target, "text/plain", text.toByteArray(Charsets.UTF_8)).use { it.clientMsgId() }
            model.addOutgoing(id, clientMsgId, text, clock())
            publish()
            persist()
            return clientMsgId
        }
    }

    /** Fetches the previous page of the open room's history. */
    fun loadOlder() {
        synchronized(lock) {
            val c = client ?: return
            val id = model.openId as? ConversationId.Room ?: return
            val after = model.startHistory(id) ?: return
            try {
                c.syncRoom(id.room, after.toULong())
            } catch (e: TetherException) {
                model.cancelHistory(id)
                model.notice = Format.error(e)
            }
            publish()
        }
    }

    fun dismissNotice() {
        synchronized(lock) {
            model.notice = null
            publish()
        }
    }

    // --- platform signals -----------------------------------------------------------------

    /** The app went to the background (ProcessLifecycleOwner ON_STOP). */
    fun onBackground() {
        synchronized(lock) {
            val c = client ?: return
            if (paused) return
            paused = true
            runCatching { c.pause() }
        }
    }

    /** The app is in the foreground again (ON_START). */
    fun onForeground() {
        synchronized(lock) {
            val c = client ?: return
            if (!paused) return
            paused = false
            runCatching { c.resume() }
        }
    }

    /** The network changed (ConnectivityManager.NetworkCallback onAvailable / onLost). */
    fun onNetworkChanged() {
        val c = synchronized(lock) { client } ?: return
        scope.launch { runCatching { c.networkChanged() } }
    }

    /**
     * Signs out: logs out (the SDK's close), and forgets this device's local state (the SDK's
     * state dir, the display cache, the saved form). Unsent messages are dropped.
     */
    suspend fun signOut() {
        val c = synchronized(lock) {
            val c = client
            client = null
            registration?.stop()
            registration = null
            c
        }
        c?.let {
            runCatching { it.stop() }
            it.close()
        }
        synchronized(lock) {
            cache.clear()
            File(device.stateDir).deleteRecursively()
            device.pinnedCertFile.delete()
            model.reset()
            phase = SignInPhase.SIGNED_OUT
            paused = false
            publish()
        }
    }

    /** Stops the client but keeps every local state (an app being torn down; tests). */
    suspend fun shutdown() {
        val c = synchronized(lock) {
            val c = client
            client = null
            registration?.stop()
            registration = null
            phase = SignInPhase.SIGNED_OUT
            c
        }
        c?.let {
            runCatching { it.stop() }
            it.close()
        }
        cache.flush()
        scope.cancel()
    }

    /** The outbox's size (the sign-out dialog warns about unsent messages). */
    suspend fun unsentCount(): Int = synchronized(lock) { client }?.let { runCatching { it.outbox().size }.getOrDefault(0) } ?: 0
}
