plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.plugin.compose")
}

// The Tether SDK exactly as bindings/scripts/build-aar writes it (run that script first, from the
// repository root): the uniffi bindings + the Flow adapter (package uniffi.tether_ffi) and
// libtether_ffi.so for arm64-v8a, armeabi-v7a and x86_64.
val tetherAar = rootProject.file("../target/android/tether-sdk.aar")
if (!tetherAar.exists()) {
    throw GradleException("${tetherAar.path} is missing: run bindings/scripts/build-aar in the repository root first (it needs the Android NDK and cargo-ndk)")
}

android {
    namespace = "dev.tether.demo"
    compileSdk = 36

    defaultConfig {
        applicationId = "dev.tether.demo"
        minSdk = 26
        targetSdk = 36
        versionCode = 1
        versionName = "0.1"
        ndk {
            // The ABIs build-aar builds.
            abiFilters += listOf("arm64-v8a", "armeabi-v7a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    buildFeatures {
        compose = true
    }
}

dependencies {
    implementation(files(tetherAar))
    // What the AAR needs at run time: JNA (with its Android native libraries) and coroutines.
    implementation("net.java.dev.jna:jna:5.13.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.10.2")

    implementation(platform("androidx.compose:compose-bom:2025.07.00"))
    implementation("androidx.compose.ui:ui")
    implementation("androidx.compose.foundation:foundation")
    implementation("androidx.compose.material3:material3")
    implementation("androidx.activity:activity-compose:1.10.1")
    implementation("androidx.lifecycle:lifecycle-process:2.9.1")
    implementation("androidx.lifecycle:lifecycle-runtime-compose:2.9.1")
    debugImplementation("androidx.compose.ui:ui-tooling")
}
