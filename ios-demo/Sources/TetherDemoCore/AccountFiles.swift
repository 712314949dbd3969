// Where the app keeps the signed-in account: the sign-in settings, the SDK's state dir, the
// display cache and a pasted development certificate, all under one folder (the app's
// Application Support). A demo keeps the credential in a file; a real app keeps it in the
// Keychain (after a ticket login the SDK logs in again with the resume token in its state dir).
import Foundation

public enum AccountFilesError: Error, Hashable, CustomStringConvertible {
    case noSuchCertificate(String)

    public var description: String {
        switch self {
        case let .noSuchCertificate(path): return "No certificate file at \(path) (paste the PEM text instead)"
        }
    }
}

public struct AccountFiles: Hashable, Sendable {
    public let root: URL

    public init(root: URL) {
        self.root = root
    }

    /// `Application Support/Tether` of the app.
    public static func applicationSupport() throws -> AccountFiles {
        let base = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        return AccountFiles(root: base.appendingPathComponent("Tether", isDirectory: true))
    }

    /// The SDK's state dir: outbox, cursors, resume token, device id.
    public var stateDir: URL { root.appendingPathComponent("sdk-state", isDirectory: true) }
    public var cacheURL: URL { root.appendingPathComponent("display-cache.json") }
    public var settingsURL: URL { root.appendingPathComponent("account.json") }
    public var certificateURL: URL { root.appendingPathComponent("pinned-cert.pem") }

    /// The store's options for this account.
    public func storeOptions(metadata: [String: String] = ["app": "tether-ios-demo"]) -> ChatStore.Options {
        ChatStore.Options(stateDir: stateDir, cache: FileDisplayCache(url: cacheURL), metadata: metadata)
    }

    public func loadSettings() -> AccountSettings? {
        guard let data = try? Data(contentsOf: settingsURL) else { return nil }
        return try? JSONDecoder().decode(AccountSettings.self, from: data)
    }

    public func saveSettings(_ settings: AccountSettings) throws {
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        try JSONEncoder().encode(settings).write(to: settingsURL, options: .atomic)
    }

    /// Signs out for good: the settings, the display cache, the SDK's state and the certificate.
    public func forget() {
        for url in [settingsURL, cacheURL, stateDir, certificateURL] {
            try? FileManager.default.removeItem(at: url)
        }
    }

    /// The certificate field of the sign-in form: empty -> nil (the platform's trust store);
    /// PEM text -> written next to the account and pinned; else the path of a file (on the
    /// simulator the Mac's `tether-data/dev-cert.pem` can be named directly).
    public func pinnedCertificate(from field: String) throws -> String? {
        let text = field.trimmingCharacters(in: .whitespacesAndNewlines)
        if text.isEmpty { return nil }
        if text.hasPrefix("-----BEGIN") {
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
            try Data((text + "\n").utf8).write(to: certificateURL, options: .atomic)
            return certificateURL.path
        }
        let path = NSString(string: text).expandingTildeInPath
        guard FileManager.default.fileExists(atPath: path) else { throw AccountFilesError.noSuchCertificate(path) }
        return path
    }
}
