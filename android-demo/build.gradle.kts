// AGP 9 compiles Kotlin itself (built-in Kotlin): the Kotlin Gradle plugin below is only put on
// the build classpath, not applied, to pin the Kotlin version. It must be the one that compiled
// the AAR's classes (bindings/scripts/build-aar: kotlinc 2.4.20), or newer; checked by
// android-demo/scripts/core-test.
plugins {
    id("com.android.application") version "9.1.0" apply false
    id("org.jetbrains.kotlin.android") version "2.4.20" apply false
    id("org.jetbrains.kotlin.plugin.compose") version "2.4.20" apply false
}
