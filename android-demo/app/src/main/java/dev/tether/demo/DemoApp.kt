// The Android glue: one TetherStore for the process, and the platform's signals forwarded to it.
package dev.tether.demo

import android.app.Application
import android.net.ConnectivityManager
import android.net.Network
import android.os.Build
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import dev.tether.demo.core.DeviceProfile
import dev.tether.demo.core.TetherStore

class DemoApp : Application() {
    lateinit var store: TetherStore
        private set

    override fun onCreate() {
        super.onCreate()
        store = TetherStore(
            DeviceProfile(
                dataDir = filesDir.path,
                deviceType = "phone",
                metadata = mapOf("app" to "tether-android-demo", "os" to "Android ${Build.VERSION.RELEASE}"),
            ),
        )
        // The cached conversations at once; the last sign-in again (the SDK resumes the session).
        store.restore()

        // The app goes to the background / comes back: pause() / resume().
        ProcessLifecycleOwner.get().lifecycle.addObserver(
            object : DefaultLifecycleObserver {
                override fun onStart(owner: LifecycleOwner) = store.onForeground()

                override fun onStop(owner: LifecycleOwner) = store.onBackground()
            },
        )

        // Wi-Fi <-> cellular, a network lost or back: networkChanged() (QUIC connection migration;
        // a pending reconnect is tried at once).
        getSystemService(ConnectivityManager::class.java).registerDefaultNetworkCallback(
            object : ConnectivityManager.NetworkCallback() {
                override fun onAvailable(network: Network) = store.onNetworkChanged()

                override fun onLost(network: Network) = store.onNetworkChanged()
            },
        )
    }
}
