package dev.tether.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import dev.tether.demo.ui.DemoTheme
import dev.tether.demo.ui.TetherApp

class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val store = (application as DemoApp).store
        setContent { DemoTheme { TetherApp(store) } }
    }
}
