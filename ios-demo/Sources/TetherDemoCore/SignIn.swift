// The sign-in form: a node address or a registry URL, a one-time ticket or a JWT, and for
// development the node's self-signed certificate. Turned into the SDK's ClientConfig here.
import Foundation
import TetherSDK

/// Where the app finds a node.
public enum Endpoint: Hashable, Codable, Sendable {
    /// A node's QUIC address, `host:port`.
    case server(String)
    /// An Eureka registry the nodes register with (`http://host:7080/eureka/`): the SDK picks
    /// the least-loaded node that is up.
    case registry(String)
}

/// What the user signs in with.
public enum CredentialKind: String, Hashable, Codable, Sendable, CaseIterable {
    /// A one-time login ticket from the admin API (`POST /v1/tickets`); later logins of this
    /// device use the resume token the SDK keeps in its state dir.
    case ticket
    /// A JWT minted by the app's backend.
    case token

    /// A JWT has three base64url parts whose first is a JSON header; anything else is a ticket.
    public static func guess(_ secret: String) -> CredentialKind {
        let parts = secret.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let header = JWT.decodePart(String(parts[0])),
              (try? JSONSerialization.jsonObject(with: header)) as? [String: Any] != nil else {
            return .ticket
        }
        return .token
    }
}

/// A saved sign-in: enough to start the client again after the app restarts.
public struct AccountSettings: Hashable, Codable, Sendable {
    public var endpoint: Endpoint
    public var credentialKind: CredentialKind
    public var secret: String
    /// A PEM or DER file with the node's certificate (a development node's `dev-cert.pem`);
    /// nil: the platform's trust store (a release build against a real certificate).
    public var pinnedCertificatePath: String?
    /// One session per user and device type: a second sign-in of the same user as `phone`
    /// elsewhere signs this one out.
    public var deviceType: String

    public init(endpoint: Endpoint, credentialKind: CredentialKind, secret: String,
                pinnedCertificatePath: String? = nil, deviceType: String = "phone") {
        self.endpoint = endpoint
        self.credentialKind = credentialKind
        self.secret = secret
        self.pinnedCertificatePath = pinnedCertificatePath
        self.deviceType = deviceType
    }

    public var credential: Credential {
        switch credentialKind {
        case .ticket: return .ticket(ticket: secret)
        case .token: return .token(jwt: secret)
        }
    }

    /// The user, when the credential names it (a JWT's `sub`); a ticket's user is known after
    /// the login.
    public var knownUser: String? {
        credentialKind == .token ? JWT.subject(secret) : nil
    }

    /// The SDK configuration: the state dir keeps the outbox, the cursors, the resume token and
    /// the device id across restarts.
    public func clientConfig(stateDir: String, deviceId: String? = nil, timing: Timing? = nil,
                             metadata: [String: String] = [:]) -> ClientConfig {
        let trust = pinnedCertificatePath.map { Trust.pinned(path: $0) } ?? Trust.platform
        switch endpoint {
        case let .server(address):
            return ClientConfig(
                server: address, serverName: nil, trust: trust, deviceType: deviceType, deviceId: deviceId,
                stateDir: stateDir, metadata: metadata, timing: timing
            )
        case let .registry(url):
            return ClientConfig(
                server: "", serverName: nil, trust: trust, deviceType: deviceType, deviceId: deviceId,
                stateDir: stateDir, metadata: metadata, timing: timing, registryUrls: [url]
            )
        }
    }
}

public enum SignInError: Error, Hashable, CustomStringConvertible {
    case emptyEndpoint
    case badEndpoint(String)
    case badPort(String)
    case emptySecret

    public var description: String {
        switch self {
        case .emptyEndpoint: return "Enter a node address (host:port) or a registry URL (http://host:7080/eureka/)"
        case let .badEndpoint(text): return "Not a node address or a registry URL: \(text)"
        case let .badPort(text): return "Not a port number: \(text)"
        case .emptySecret: return "Enter a ticket or a token"
        }
    }
}

public enum SignInForm {
    /// The QUIC port of a node started with the project's run command.
    public static let defaultPort = 7443

    /// Checks the form and makes the settings. `kind` nil: guessed from the secret.
    public static func parse(endpoint: String, secret: String, kind: CredentialKind? = nil,
                             pinnedCertificatePath: String? = nil, deviceType: String = "phone") throws -> AccountSettings {
        let endpoint = try parseEndpoint(endpoint)
        let secret = secret.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !secret.isEmpty else { throw SignInError.emptySecret }
        let pin = pinnedCertificatePath?.trimmingCharacters(in: .whitespacesAndNewlines)
        return AccountSettings(
            endpoint: endpoint, credentialKind: kind ?? CredentialKind.guess(secret), secret: secret,
            pinnedCertificatePath: (pin?.isEmpty ?? true) ? nil : pin, deviceType: deviceType
        )
    }

    /// `http(s)://...`: a registry (a bare `http://host:7080` gets the `/eureka/` path).
    /// `host:port`, `host` (port 7443), `[::1]:7443`, `::1`: a node.
    public static func parseEndpoint(_ text: String) throws -> Endpoint {
        let text = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { throw SignInError.emptyEndpoint }
        let lower = text.lowercased()
        if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            guard let url = URL(string: text), let host = url.host, !host.isEmpty else {
                throw SignInError.badEndpoint(text)
            }
            var base = text
            if url.path.isEmpty || url.path == "/" {
                base = (text.hasSuffix("/") ? String(text.dropLast()) : text) + "/eureka/"
            } else if !base.hasSuffix("/") {
                base += "/"
            }
            return .registry(base)
        }
        if text.contains("://") || text.contains("/") || text.contains(" ") {
            throw SignInError.badEndpoint(text)
        }
        if text.hasPrefix("[") {
            // [v6]:port or [v6]
            guard let close = text.firstIndex(of: "]") else { throw SignInError.badEndpoint(text) }
            let host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard !host.isEmpty else { throw SignInError.badEndpoint(text) }
            if rest.isEmpty { return .server("[\(host)]:\(defaultPort)") }
            guard rest.hasPrefix(":") else { throw SignInError.badEndpoint(text) }
            let number = try port(String(rest.dropFirst()))
            return .server("[\(host)]:\(number)")
        }
        let colons = text.filter { $0 == ":" }.count
        if colons == 0 { return .server("\(text):\(defaultPort)") }
        if colons > 1 { return .server("[\(text)]:\(defaultPort)") }  // a bare IPv6 address
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard !parts[0].isEmpty else { throw SignInError.badEndpoint(text) }
        let number = try port(String(parts[1]))
        return .server("\(parts[0]):\(number)")
    }

    static func port(_ text: String) throws -> Int {
        guard let n = Int(text), (1...65535).contains(n) else { throw SignInError.badPort(text) }
        return n
    }
}

public enum JWT {
    /// The `sub` claim of a JWT (not verified: only to show the user's name early).
    public static func subject(_ token: String) -> String? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let payload = decodePart(String(parts[1])),
              let claims = (try? JSONSerialization.jsonObject(with: payload)) as? [String: Any] else {
            return nil
        }
        return claims["sub"] as? String
    }

    /// base64url without padding, decoded.
    static func decodePart(_ part: String) -> Data? {
        var s = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }
}
