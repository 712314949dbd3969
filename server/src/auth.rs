//! Authentication: JWTs from the app's backend, one-time tickets, and resume tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tether_proto::ErrorCode;
use thiserror::Error;

use crate::store::StoreError;

/// Why a login credential was refused.
#[derive(Debug, Error)]
pub enum AuthError {
    /// Not a JWT we accept (format, algorithm, claims, no key configured for its algorithm).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The JWT's signature does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// The JWT's `exp` has passed.
    #[error("token expired")]
    TokenExpired,
    /// Unknown or already used ticket.
    #[error("ticket invalid or already used")]
    TicketInvalid,
    /// The ticket has expired.
    #[error("ticket expired")]
    TicketExpired,
    /// The store could not be asked.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The wire error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::InvalidToken(_) => ErrorCode::InvalidToken,
            AuthError::BadSignature => ErrorCode::BadSignature,
            AuthError::TokenExpired => ErrorCode::TokenExpired,
            AuthError::TicketInvalid => ErrorCode::TicketInvalid,
            AuthError::TicketExpired => ErrorCode::TicketExpired,
            AuthError::Store(_) => ErrorCode::Unavailable,
        }
    }

    /// Label for the `tether_logins_total{result}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::TokenExpired => "token_expired",
            AuthError::TicketInvalid => "ticket_invalid",
            AuthError::TicketExpired => "ticket_expired",
            AuthError::Store(_) => "store_error",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// What a JWT must satisfy besides its signature and `exp`.
#[derive(Debug, Clone, Default)]
pub struct JwtRules {
    /// Clock skew allowed for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Accepted audiences: when non-empty, `aud` is required and must name one of them; when
    /// empty, `aud` is not checked.
    pub audience: Vec<String>,
    /// Required issuer: when set, `iss` is required and must equal it.
    pub issuer: Option<String>,
}

/// Checks JWTs and signs/verifies resume tokens.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    public: Option<(DecodingKey, Vec<Algorithm>)>,
    rules: JwtRules,
    resume_key: Vec<u8>,
}

/// A JWT library error as a message for the client: names the problem, not the library.
fn jwt_refusal(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    let msg = match kind {
        K::InvalidSignature => return AuthError::BadSignature,
        K::ExpiredSignature => return AuthError::TokenExpired,
        K::ImmatureSignature => "token not valid yet (nbf is in the future)".to_owned(),
        K::InvalidAudience => "audience (aud) not accepted".to_owned(),
        K::InvalidIssuer => "issuer (iss) not accepted".to_owned(),
        K::InvalidSubject => "subject (sub) not accepted".to_owned(),
        K::MissingRequiredClaim(c) => format!("required claim `{c}` missing"),
        K::InvalidClaimFormat(c) => format!("claim `{c}` has the wrong type"),
        K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            "algorithm not accepted".to_owned()
        }
        K::Json(_) => "malformed claims".to_owned(),
        K::Base64(_) | K::Utf8(_) | K::InvalidToken => "malformed token".to_owned(),
        _ => "token not accepted".to_owned(),
    };
    AuthError::InvalidToken(msg)
}

/// Failure to set up the authenticator from configuration.
#[derive(Debug, Error)]
#[error("JWT public key: {0}")]
pub struct KeyError(String);

impl Authenticator {
    /// `hs256_secret`: shared secret for HS256. `public_key_pem`: an RSA (RS256/384/512) or EC
    /// P-256 (ES256) public key. `resume_key`: secret for resume tokens.
    pub fn new(
        hs256_secret: Option<&str>,
        public_key_pem: Option<&[u8]>,
        rules: JwtRules,
        resume_key: Vec<u8>,
    ) -> Result<Self, KeyError> {
        let public = match public_key_pem {
            None => None,
            Some(pem) => {
                if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                    Some((k, vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]))
                } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                    Some((k, vec![Algorithm::ES256]))
                } else {
                    return Err(KeyError("not an RSA or EC public key in PEM".into()));
                }
            }
        };
        Ok(Authenticator {
            hs256: hs256_secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
            rules,
            resume_key,
        })
    }

    /// Verifies a JWT and returns its `sub`.
    pub fn verify_jwt(&self, token: &str) -> Result<String, AuthError> {
        // A header the library cannot parse (`alg: none` among them) is refused without the
        // library's own wording (it would list its algorithms to the client).
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => AuthError::InvalidToken("algorithm not accepted".into()),
            kind => jwt_refusal(kind),
        })?;
        let (key, algs) = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(k) => (k, vec![Algorithm::HS256]),
                None => return Err(AuthError::InvalidToken("HS256 tokens are not configured".into())),
            },
            alg => match &self.public {
                Some((k, algs)) if algs.contains(&alg) => (k, algs.clone()),
                _ => return Err(AuthError::InvalidToken(format!("{alg:?} tokens are not configured"))),
            },
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = algs;
        v.leeway = self.rules.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if self.rules.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.rules.audience);
            required.push("aud");
        }
        if let Some(iss) = &self.rules.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        match jsonwebtoken::decode::<Claims>(token, key, &v) {
            Ok(data) if !data.claims.sub.is_empty() => Ok(data.claims.sub),
            Ok(_) => Err(AuthError::InvalidToken("empty sub".into())),
            Err(e) => Err(jwt_refusal(e.kind())),
        }
    }

    fn resume_mac(&self, user: &str, device_id: &str, expires_ms: u64) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.resume_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(format!("tether-resume-v1|{user}|{device_id}|{expires_ms}").as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A resume token for `user` on `device_id`, valid until `expires_ms`.
    pub fn mint_resume(&self, user: &str, device_id: &str, expires_ms: u64) -> String {
        let mac = self.resume_mac(user, device_id, expires_ms);
        format!("v1.{}.{}.{}", B64.encode(user), expires_ms, B64.encode(mac))
    }

    /// Verifies a resume token presented by `device_id` and returns its user.
    pub fn verify_resume(&self, token: &str, device_id: &str, now_ms: u64) -> Result<String, AuthError> {
        let bad = || AuthError::InvalidToken("malformed resume token".into());
        let mut parts = token.split('.');
        let (Some("v1"), Some(user), Some(exp), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let user = String::from_utf8(B64.decode(user).map_err(|_| bad())?).map_err(|_| bad())?;
        let exp: u64 = exp.parse().map_err(|_| bad())?;
        let mac = B64.decode(mac).map_err(|_| bad())?;
        let want = self.resume_mac(&user, device_id, exp);
        // Constant-time comparison through the Mac API.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.resume_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        m.update(format!("tether-resume-v1|{user}|{device_id}|{exp}").as_bytes());
        if m.verify_slice(&mac).is_err() || want.len() != mac.len() {
            return Err(AuthError::BadSignature);
        }
        if exp <= now_ms {
            return Err(AuthError::TokenExpired);
        }
        Ok(user)
    }
}

/// SHA-256 hex of a ticket: tickets are stored only as hashes.
pub fn ticket_hash(ticket: &str) -> String {
    hex::encode(Sha256::digest(ticket.as_bytes()))
}

/// Whether `t` has the shape of a ticket from [`new_ticket`]; anything else is refused without
/// asking the store.
pub fn is_ticket_shaped(t: &str) -> bool {
    t.len() == 35 && t.starts_with("tk_") && t[3..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh random ticket string.
pub fn new_ticket() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("tk_{}", B64.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now_s() -> u64 {
        crate::ids::now_ms() / 1000
    }

    fn auth() -> Authenticator {
        Authenticator::new(Some("s3cret"), None, JwtRules::default(), b"resume-key".to_vec()).unwrap()
    }

    fn hs(secret: &str, sub: &str, exp: u64) -> String {
        encode(&Header::new(Algorithm::HS256), &C { sub, exp }, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[test]
    fn hs256_accepts_good_and_types_the_failures() {
        let a = auth();
        assert_eq!(a.verify_jwt(&hs("s3cret", "alice", now_s() + 60)).unwrap(), "alice");
        assert!(matches!(a.verify_jwt(&hs("other", "alice", now_s() + 60)), Err(AuthError::BadSignature)));
        assert!(matches!(a.verify_jwt(&hs("s3cret", "alice", now_s() - 60)), Err(AuthError::TokenExpired)));
        assert!(matches!(a.verify_jwt("not.a.jwt"), Err(AuthError::InvalidToken(_))));
        assert!(matches!(a.verify_jwt(&hs("s3cret", "", now_s() + 60)), Err(AuthError::InvalidToken(_))));
    }

    fn hs_claims(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"s3cret")).unwrap()
    }

    fn refusal(r: Result<String, AuthError>) -> String {
        match r {
            Err(AuthError::InvalidToken(m)) => m,
            other => panic!("expected invalid_token, got {other:?}"),
        }
    }

    #[test]
    fn audience_issuer_and_nbf_are_checked_as_configured() {
        let exp = now_s() + 60;
        // No audience configured: any aud is fine (it is the backend's business).
        let a = auth();
        assert_eq!(a.verify_jwt(&hs_claims(serde_json::json!({"sub": "al", "exp": exp, "aud": "x"}))).unwrap(), "al");
        // A future nbf is refused; within the leeway it is accepted.
        let t = hs_claims(serde_json::json!({"sub": "al", "exp": exp, "nbf": now_s() + 30}));
        assert!(refusal(a.verify_jwt(&t)).contains("nbf"));
        let rules = JwtRules { leeway_secs: 60, ..JwtRules::default() };
        let lenient = Authenticator::new(Some("s3cret"), None, rules, vec![1]).unwrap();
        assert_eq!(lenient.verify_jwt(&t).unwrap(), "al");

        let rules = JwtRules {
            leeway_secs: 0,
            audience: vec!["chat".into(), "chat-beta".into()],
            issuer: Some("https://auth.example".into()),
        };
        let strict = Authenticator::new(Some("s3cret"), None, rules, vec![1]).unwrap();
        let good = serde_json::json!({"sub": "al", "exp": exp, "aud": "chat-beta", "iss": "https://auth.example"});
        assert_eq!(strict.verify_jwt(&hs_claims(good.clone())).unwrap(), "al");
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = "billing".into();
        assert_eq!(refusal(strict.verify_jwt(&hs_claims(wrong_aud))), "audience (aud) not accepted");
        let mut no_aud = good.clone();
        no_aud.as_object_mut().unwrap().remove("aud");
        assert_eq!(refusal(strict.verify_jwt(&hs_claims(no_aud))), "required claim `aud` missing");
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = "https://evil.example".into();
        assert_eq!(refusal(strict.verify_jwt(&hs_claims(wrong_iss))), "issuer (iss) not accepted");
        let mut no_iss = good;
        no_iss.as_object_mut().unwrap().remove("iss");
        assert_eq!(refusal(strict.verify_jwt(&hs_claims(no_iss))), "required claim `iss` missing");
    }

    #[test]
    fn refusals_name_the_problem_without_library_internals() {
        let a = auth();
        // alg: none, hand-made: header {"alg":"none","typ":"JWT"}.
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(br#"{"sub":"al","exp":9999999999}"#)
        );
        let m = refusal(a.verify_jwt(&none));
        assert_eq!(m, "algorithm not accepted");
        for t in ["not.a.jwt", "", "a.b", &format!("{}.e30.sig", B64.encode(b"{"))] {
            let m = refusal(a.verify_jwt(t));
            assert!(!m.contains("variant") && !m.contains("expected") && !m.contains("line"), "{t:?}: {m}");
        }
        let wrong_type = hs_claims(serde_json::json!({"sub": 5, "exp": now_s() + 60}));
        assert_eq!(refusal(a.verify_jwt(&wrong_type)), "malformed claims");
    }

    #[test]
    fn es256_with_a_configured_public_key() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let a = Authenticator::new(None, Some(kp.public_key_pem().as_bytes()), JwtRules::default(), vec![1]).unwrap();
        let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let t = encode(&Header::new(Algorithm::ES256), &C { sub: "bob", exp: now_s() + 60 }, &enc).unwrap();
        assert_eq!(a.verify_jwt(&t).unwrap(), "bob");
        // HS256 is not configured on this node.
        assert!(matches!(a.verify_jwt(&hs("s3cret", "bob", now_s() + 60)), Err(AuthError::InvalidToken(_))));
        // A token signed by another key.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        let t = encode(&Header::new(Algorithm::ES256), &C { sub: "bob", exp: now_s() + 60 }, &enc).unwrap();
        assert!(matches!(a.verify_jwt(&t), Err(AuthError::BadSignature)));
    }

    #[test]
    fn resume_tokens_bind_user_device_and_expiry() {
        let a = auth();
        let t = a.mint_resume("alice", "dev1", 5000);
        assert_eq!(a.verify_resume(&t, "dev1", 4000).unwrap(), "alice");
        assert!(matches!(a.verify_resume(&t, "dev2", 4000), Err(AuthError::BadSignature)));
        assert!(matches!(a.verify_resume(&t, "dev1", 6000), Err(AuthError::TokenExpired)));
        let forged = t.replacen("YWxpY2U", "bWFsbG9yeQ", 1); // alice -> mallory
        assert!(matches!(a.verify_resume(&forged, "dev1", 4000), Err(AuthError::BadSignature)));
        assert!(a.verify_resume("v1.x", "dev1", 0).is_err());
    }

    #[test]
    fn ticket_hash_is_stable_and_tickets_differ() {
        assert_eq!(ticket_hash("a"), ticket_hash("a"));
        assert_ne!(new_ticket(), new_ticket());
        assert!(is_ticket_shaped(&new_ticket()));
        assert!(!is_ticket_shaped("tk_short"));
        assert!(!is_ticket_shaped(&format!("tk_{}", "é".repeat(16))));
        assert!(!is_ticket_shaped(&format!("xx_{}", "a".repeat(32))));
    }
}
