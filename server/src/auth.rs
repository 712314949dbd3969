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

/// Checks JWTs and signs/verifies resume tokens.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    public: Option<(DecodingKey, Vec<Algorithm>)>,
    leeway_secs: u64,
    resume_key: Vec<u8>,
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
        leeway_secs: u64,
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
            leeway_secs,
            resume_key,
        })
    }

    /// Verifies a JWT and returns its `sub`.
    pub fn verify_jwt(&self, token: &str) -> Result<String, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::InvalidToken(e.to_string()))?;
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
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token, key, &v) {
            Ok(data) if !data.claims.sub.is_empty() => Ok(data.claims.sub),
            Ok(_) => Err(AuthError::InvalidToken("empty sub".into())),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::InvalidToken(e.to_string()),
            }),
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
        Authenticator::new(Some("s3cret"), None, 0, b"resume-key".to_vec()).unwrap()
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

    #[test]
    fn es256_with_a_configured_public_key() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let a = Authenticator::new(None, Some(kp.public_key_pem().as_bytes()), 0, vec![1]).unwrap();
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
    }
}
