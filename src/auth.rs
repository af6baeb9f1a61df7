//! Join authentication: which player a connection speaks for and which rooms it may enter.
//!
//! A `join` carries a JWT (`join.token`) signed with HMAC-SHA256 (`alg: HS256`) by the game
//! backend, with the claims of [`JoinClaims`]: the player id (`sub`), the rooms it may join
//! (`rooms`: exact ids or prefixes ending in `*`) and an expiry (`exp`). The node verifies it
//! against every configured key (`--auth-key`, repeatable: key rotation), or only the key
//! named by the token's `kid` header when it has one.
//!
//! Owns nothing else: no I/O, no room state. The session asks [`JoinAuth::verify`] before it
//! hands a join to the registry; the room then admits the player under the token's id.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::is_id_byte;
use crate::protocol::ErrorCode;

/// Shortest accepted HMAC secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_KEY_BYTES: usize = 32;
/// Longest player id a token may name, in bytes (player ids appear in state paths).
pub const MAX_PLAYER_ID_BYTES: usize = 64;
/// Most room patterns in one token.
pub const MAX_ROOM_PATTERNS: usize = 64;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// Longest token accepted, in bytes (it arrives inside a frame, but parsing is not free).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// The player id: 1-64 bytes of `[A-Za-z0-9_.:-]`. The player is known by it in the room
    /// (`joined.player`, presence, `players/<sub>/...` paths).
    pub sub: String,
    /// Rooms the player may join: an exact room id, or a prefix followed by `*`
    /// (`arena:eu-*`; a lone `*` allows every room).
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch. Checked at join time only: a joined player is
    /// not disconnected when its token expires (see docs/SECURITY.md).
    pub exp: u64,
}

impl JoinClaims {
    /// Whether the claims allow joining `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.rooms.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => pattern == room,
        })
    }
}

/// One verification key.
#[derive(Clone)]
struct VerifyKey {
    /// Matched against the token's `kid` header.
    id: String,
    key: DecodingKey,
}

/// Why a join token was refused. Every variant maps to a wire error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this node requires a join token (join.token)")]
    Missing,
    #[error("the join token is invalid: {0}")]
    Invalid(String),
    #[error("the join token has expired; get a new one")]
    Expired,
    #[error("the join token does not allow room {0}")]
    RoomNotAllowed(String),
}

impl AuthError {
    /// The error code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => ErrorCode::Unauthorized,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::RoomNotAllowed(_) => ErrorCode::Forbidden,
        }
    }

    /// The `reason` label of the auth-failures metric.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::RoomNotAllowed(_) => "room_not_allowed",
        }
    }

    /// Every metric label, to register them at zero.
    pub const LABELS: [&'static str; 4] = ["missing", "invalid", "expired", "room_not_allowed"];
}

/// A malformed `--auth-key` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeySpecError(pub String);

/// Verifies join tokens with one or more keys.
#[derive(Clone)]
pub struct JoinAuth {
    keys: Vec<VerifyKey>,
    validation: Validation,
}

impl JoinAuth {
    /// Keys from `--auth-key` values, each `KID:SECRET` (KID: 1-32 bytes of
    /// `[A-Za-z0-9_.-]`; SECRET: at least [`MIN_KEY_BYTES`] bytes, used as is).
    pub fn from_specs(specs: &[String]) -> Result<JoinAuth, KeySpecError> {
        let mut keys: Vec<VerifyKey> = Vec::with_capacity(specs.len());
        for spec in specs {
            let (id, secret) = parse_key_spec(spec)?;
            if keys.iter().any(|k| k.id == id) {
                return Err(KeySpecError(format!("key id {id:?} is given twice")));
            }
            keys.push(VerifyKey { id: id.to_owned(), key: DecodingKey::from_secret(secret.as_bytes()) });
        }
        if keys.is_empty() {
            return Err(KeySpecError("no key given".into()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(JoinAuth { keys, validation })
    }

    /// Number of verification keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Checks `token` and that it allows `room`; returns its claims.
    pub fn verify(&self, token: Option<&str>, room: &str) -> Result<JoinClaims, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => self.keys.iter().filter(|k| &k.id == kid).collect(),
            None => self.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::Invalid("unknown key id (kid)".into()));
        }
        let mut last = AuthError::Invalid("no key verifies it".into());
        for key in candidates {
            match jsonwebtoken::decode::<JoinClaims>(token, &key.key, &self.validation) {
                Ok(data) => return check_claims(data.claims, room),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        // Only a genuine signature can tell that the token expired.
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                        _ => AuthError::Invalid(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }
}

/// Signs `claims` with the key `KID:SECRET` (kid in the header), as a game backend would.
/// For tests and tools: production tokens come from the backend, which holds the key.
pub fn sign(key_spec: &str, claims: &JoinClaims) -> Result<String, KeySpecError> {
    let (id, secret) = parse_key_spec(key_spec)?;
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some(id.to_owned());
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| KeySpecError(e.to_string()))
}

fn check_claims(claims: JoinClaims, room: &str) -> Result<JoinClaims, AuthError> {
    if !is_player_id(&claims.sub) {
        return Err(AuthError::Invalid(format!(
            "sub must be 1-{MAX_PLAYER_ID_BYTES} bytes of [A-Za-z0-9_.:-]"
        )));
    }
    if claims.rooms.len() > MAX_ROOM_PATTERNS {
        return Err(AuthError::Invalid(format!("more than {MAX_ROOM_PATTERNS} room patterns")));
    }
    if !claims.allows(room) {
        return Err(AuthError::RoomNotAllowed(room.to_owned()));
    }
    Ok(claims)
}

/// Whether `id` is a valid player id.
pub fn is_player_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_PLAYER_ID_BYTES && id.bytes().all(is_id_byte)
}

/// Splits `KID:SECRET`.
fn parse_key_spec(spec: &str) -> Result<(&str, &str), KeySpecError> {
    let Some((id, secret)) = spec.split_once(':') else {
        return Err(KeySpecError("expected KID:SECRET".into()));
    };
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(KeySpecError(format!("key id {id:?} must be 1-32 bytes of [A-Za-z0-9_.-]")));
    }
    if secret.len() < MIN_KEY_BYTES {
        return Err(KeySpecError(format!(
            "the secret of key {id:?} has {} bytes; at least {MIN_KEY_BYTES} are needed",
            secret.len()
        )));
    }
    Ok((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const K1: &str = "k1:0123456789abcdef0123456789abcdef";
    const K2: &str = "k2:fedcba9876543210fedcba9876543210";

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn sign(spec: &str, kid: Option<&str>, claims: &JoinClaims) -> String {
        let (_, secret) = parse_key_spec(spec).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn claims(sub: &str, rooms: &[&str], exp: u64) -> JoinClaims {
        JoinClaims { sub: sub.into(), rooms: rooms.iter().map(|s| s.to_string()).collect(), exp }
    }

    #[test]
    fn a_token_of_either_key_verifies_during_rotation() {
        let auth = JoinAuth::from_specs(&[K1.into(), K2.into()]).unwrap();
        let c = claims("alice", &["r1"], now() + 60);
        assert_eq!(auth.verify(Some(&sign(K1, None, &c)), "r1").unwrap(), c);
        assert_eq!(auth.verify(Some(&sign(K2, Some("k2"), &c)), "r1").unwrap(), c);
        // A kid that names the other key is not tried against every key.
        assert!(matches!(auth.verify(Some(&sign(K2, Some("k1"), &c)), "r1"), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify(Some(&sign(K2, Some("k9"), &c)), "r1"), Err(AuthError::Invalid(_))));
        // After rotation the old key's tokens are refused.
        let rotated = JoinAuth::from_specs(&[K2.into()]).unwrap();
        assert!(matches!(rotated.verify(Some(&sign(K1, None, &c)), "r1"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn expired_forged_missing_and_foreign_room_tokens_are_refused_with_their_codes() {
        let auth = JoinAuth::from_specs(&[K1.into()]).unwrap();
        let expired = sign(K1, None, &claims("alice", &["r1"], now() - 3600));
        assert_eq!(auth.verify(Some(&expired), "r1"), Err(AuthError::Expired));
        assert_eq!(AuthError::Expired.code(), ErrorCode::TokenExpired);
        let forged = sign("kx:0123456789abcdef0123456789abcdeX", None, &claims("alice", &["*"], now() + 60));
        assert!(matches!(auth.verify(Some(&forged), "r1"), Err(AuthError::Invalid(_))));
        assert_eq!(auth.verify(None, "r1"), Err(AuthError::Missing));
        assert_eq!(auth.verify(Some(""), "r1"), Err(AuthError::Missing));
        assert!(matches!(auth.verify(Some("not.a.jwt"), "r1"), Err(AuthError::Invalid(_))));
        let other = sign(K1, None, &claims("alice", &["r1", "arena:eu-*"], now() + 60));
        assert_eq!(auth.verify(Some(&other), "r2"), Err(AuthError::RoomNotAllowed("r2".into())));
        assert!(auth.verify(Some(&other), "arena:eu-7").is_ok());
        assert!(auth.verify(Some(&other), "arena:us-1").is_err());
        let bad_sub = sign(K1, None, &claims("a/b", &["*"], now() + 60));
        assert!(matches!(auth.verify(Some(&bad_sub), "r1"), Err(AuthError::Invalid(_))));
        // `alg: none` and other algorithms are refused.
        let none = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            "eyJzdWIiOiJhbGljZSIsInJvb21zIjpbIioiXSwiZXhwIjo5OTk5OTk5OTk5fQ"
        );
        assert!(matches!(auth.verify(Some(&none), "r1"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn key_specs_need_an_id_and_a_long_secret() {
        assert!(JoinAuth::from_specs(&[]).is_err());
        assert!(JoinAuth::from_specs(&["nocolon".into()]).is_err());
        assert!(JoinAuth::from_specs(&["k1:short".into()]).is_err());
        assert!(JoinAuth::from_specs(&[":0123456789abcdef0123456789abcdef".into()]).is_err());
        assert!(JoinAuth::from_specs(&[K1.into(), K1.into()]).is_err());
        assert_eq!(JoinAuth::from_specs(&[K1.into(), K2.into()]).unwrap().key_count(), 2);
    }
}
