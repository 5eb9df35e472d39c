//! Peer authentication of the ring and of state copies: the dialling side proves it holds the
//! key the coordinator handed both sides (over the authenticated control channel) before the
//! accepting side reads a single tensor byte.
//!
//! The proof is one message after the side's own header: a fresh 16-byte nonce and
//! `HMAC-SHA256(key, header || nonce)`, so a dialer that read a quorum id and a rank off
//! `/status` cannot join a ring or push a state. The acceptor checks it in constant time and
//! drops the connection on a mismatch. (Replaying a sniffed handshake needs a view of the
//! traffic, which plaintext tensors give away anyway; TLS for the data plane is not here.)

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the proof: nonce and tag.
pub const PROOF_LEN: usize = 16 + 32;

/// Decodes a hex key from a directive.
///
/// # Errors
/// A key that is not hex (a malformed directive).
pub fn key(hex_key: &str) -> Result<Vec<u8>, String> {
    hex::decode(hex_key).map_err(|e| format!("the peer key is not hex: {e}"))
}

fn tag(key: &[u8], header: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(header);
    m.update(nonce);
    m
}

/// Writes the proof for `header` (already written) to `w`.
///
/// # Errors
/// The write failed, or no randomness for the nonce.
pub fn prove(w: &mut impl Write, key: &[u8], header: &[u8]) -> std::io::Result<()> {
    let mut nonce = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    let t = tag(key, header, &nonce).finalize().into_bytes();
    let mut proof = Vec::with_capacity(PROOF_LEN);
    proof.extend_from_slice(&nonce);
    proof.extend_from_slice(&t);
    w.write_all(&proof)
}

/// Reads a proof for `header` (already read) from `r`; true when it holds the key.
pub fn verify(r: &mut impl Read, key: &[u8], header: &[u8]) -> bool {
    let mut proof = [0u8; PROOF_LEN];
    if r.read_exact(&mut proof).is_err() {
        return false;
    }
    tag(key, header, &proof[..16])
        .verify_slice(&proof[16..])
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_proves_a_header() {
        let mut wire = vec![];
        prove(&mut wire, b"key", b"header").unwrap();
        assert!(verify(&mut wire.as_slice(), b"key", b"header"));
        assert!(!verify(&mut wire.as_slice(), b"other key", b"header"));
        assert!(!verify(&mut wire.as_slice(), b"key", b"other header"));
        let mut forged = wire.clone();
        forged[20] ^= 1;
        assert!(!verify(&mut forged.as_slice(), b"key", b"header"));
        assert!(
            !verify(&mut &wire[..10], b"key", b"header"),
            "a short proof"
        );
    }
}
