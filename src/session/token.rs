//! Session tokens: `<player>.<mac>`, where mac = HMAC-SHA256(secret, room, player) truncated
//! to 128 bits, in hex. Any node holding the cluster secret can verify a token without a
//! look-up, and a token is valid only for the room it was issued in. Whether the session is
//! still within its reconnect grace is the room's decision, not the token's.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of MAC kept in a token.
const MAC_BYTES: usize = 16;

/// Issues and verifies session tokens with one secret.
#[derive(Clone)]
pub struct SessionKeys {
    secret: Vec<u8>,
}

impl SessionKeys {
    /// Keys from a shared secret (cluster mode: every node must use the same one).
    pub fn new(secret: &[u8]) -> SessionKeys {
        SessionKeys { secret: secret.to_vec() }
    }

    /// Keys from a random secret, for a single node.
    pub fn random() -> SessionKeys {
        use rand::RngCore;
        let mut secret = vec![0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        SessionKeys { secret }
    }

    fn mac(&self, room: &str, player: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any size"),
        };
        mac.update(b"gamerelay-session-v1\0");
        mac.update(room.as_bytes());
        mac.update(b"\0");
        mac.update(player.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..MAC_BYTES])
    }

    /// The token of `player` in `room`.
    pub fn issue(&self, room: &str, player: &str) -> String {
        format!("{player}.{}", self.mac(room, player))
    }

    /// The player a token was issued to, if it is genuine for `room`.
    pub fn verify<'t>(&self, room: &str, token: &'t str) -> Option<&'t str> {
        let (player, mac) = token.rsplit_once('.')?;
        let expected = self.mac(room, player);
        // Constant-time comparison of equal-length hex strings.
        let same = expected.len() == mac.len()
            && expected.bytes().zip(mac.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then_some(player)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_room_and_secret() {
        let keys = SessionKeys::new(b"0123456789abcdef");
        let token = keys.issue("r1", "p-abc");
        assert_eq!(keys.verify("r1", &token), Some("p-abc"));
        assert_eq!(keys.verify("r2", &token), None);
        assert_eq!(SessionKeys::new(b"another secret!!").verify("r1", &token), None);
        let forged = token.replace("p-abc", "p-abd");
        assert_eq!(keys.verify("r1", &forged), None);
        assert_eq!(keys.verify("r1", "garbage"), None);
    }
}
