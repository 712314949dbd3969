// swift-tools-version:5.9
// The Tether iOS demo: a SwiftUI chat app on the XCFramework that bindings/scripts/build-xcframework
// builds on a Mac. Run that script first; it writes ../target/apple/TetherSDK (the XCFramework and
// the generated Swift bindings), which this package uses in place:
//   - the binary target is the XCFramework itself, at the path build-xcframework writes it to;
//   - Sources/TetherSDK is a symlink to the folder where build-xcframework puts the generated
//     Swift (tether_ffi.swift) and the AsyncStream adapter (TetherStream.swift): SwiftPM does not
//     take sources from outside the package, the symlink brings them in.
// ios-demo/scripts/core-test checks these references (it runs in the project's test command).
import PackageDescription
#if canImport(AppleProductTypes)
import AppleProductTypes
#endif

#if canImport(AppleProductTypes)
// Xcode: the app runs on a simulator or a device straight from this package.
let app: Product = .iOSApplication(
    name: "TetherDemo",
    targets: ["TetherDemoApp"],
    bundleIdentifier: "dev.tether.demo",
    displayVersion: "1.0",
    bundleVersion: "1",
    accentColor: .presetColor(.blue),
    supportedDeviceFamilies: [.pad, .phone],
    supportedInterfaceOrientations: [.portrait, .landscapeRight, .landscapeLeft, .portraitUpsideDown(.when(deviceFamilies: [.pad]))],
    capabilities: [
        // NSLocalNetworkUsageDescription: a development node on the Mac, reached from a device.
        .localNetwork(purposeString: "Tether Demo connects to a Tether node on your local network."),
    ]
)
#else
let app: Product = .executable(name: "TetherDemo", targets: ["TetherDemoApp"])
#endif

let package = Package(
    name: "TetherDemo",
    platforms: [.iOS(.v16)],
    products: [
        app,
        .library(name: "TetherDemoCore", targets: ["TetherDemoCore"]),
        .library(name: "TetherSDK", targets: ["TetherSDK"]),
    ],
    targets: [
        // The Rust SDK, as bindings/scripts/build-xcframework builds it (module tether_ffiFFI).
        .binaryTarget(name: "tether_ffiFFI", path: "../target/apple/TetherSDK/TetherFFI.xcframework"),
        // The generated Swift bindings and the adapter (module TetherSDK), as build-xcframework lays them out.
        .target(name: "TetherSDK", dependencies: ["tether_ffiFFI"], path: "Sources/TetherSDK"),
        // Everything that is not UI: stores, the conversation list, unread counting, formatting,
        // SDK events -> screen state. Foundation and TetherSDK only: compiled and tested off-device.
        .target(name: "TetherDemoCore", dependencies: ["TetherSDK"], path: "Sources/TetherDemoCore"),
        // The SwiftUI app: screens, NWPathMonitor, scene phase.
        .executableTarget(name: "TetherDemoApp", dependencies: ["TetherDemoCore", "TetherSDK"], path: "Sources/TetherDemoApp"),
        // The core's tests: logic checks, and the scenario against a real node.
        .testTarget(name: "TetherDemoCoreTests", dependencies: ["TetherDemoCore", "TetherSDK"], path: "Tests/TetherDemoCoreTests"),
    ]
)
