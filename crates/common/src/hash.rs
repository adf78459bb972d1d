//! Hashes of keys: stable prompt ids, per-sample seeds and draws, shards.
//! (Files' content hashes, for provenance, are `io::content`.)

use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::Message;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes` in hex, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of several byte strings, each followed by a NUL.
pub fn sha256_of(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
        h.update([0]);
    }
    hex(&h.finalize())
}

/// Stable id of a conversation: the first 16 hex digits of the SHA-256 of its
/// turns, each written as `role`, NUL, `content`, NUL. Independent of any
/// serialisation library, so ids never change with a dependency upgrade.
pub fn prompt_id(messages: &[Message]) -> String {
    let mut h = Sha256::new();
    for m in messages {
        h.update(m.role.as_str().as_bytes());
        h.update([0]);
        h.update(m.content.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..8])
}

/// A uniform draw in [0, 1) fixed by (seed, salt, key): random splits made
/// with it do not depend on which other keys exist or on their order.
pub fn uniform_draw(seed: u64, salt: &str, key: &str) -> f64 {
    (keyed_u64(seed, salt, key) >> 11) as f64 / (1u64 << 53) as f64
}

/// The RNG seed of one sample: fixed by (run seed, prompt_id, model alias,
/// sample_index) alone, so a sample's text does not depend on which other
/// samples share its batch or on where a resumed run restarted.
pub fn sample_seed(seed: u64, prompt_id: &str, model: &str, sample_index: u32) -> u64 {
    keyed_u64(seed, "sample", &format!("{prompt_id}\0{model}\0{sample_index}"))
}

/// Parse `--shard i/n`.
pub fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let err = || format!("--shard takes i/n with 0 <= i < n, e.g. 0/4; got '{text}'");
    let (i, n) = text.split_once('/').ok_or_else(err)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| err())?, n.trim().parse().map_err(|_| err())?);
    if i >= n {
        return Err(err());
    }
    Ok((i, n))
}

/// Which of n disjoint parts (`--shard i/n`) a prompt belongs to: fixed by
/// its id alone, so every binary splits a run the same way.
pub fn shard_of(prompt_id: &str, n: usize) -> usize {
    ((uniform_draw(0, "shard", prompt_id) * n as f64) as usize).min(n - 1)
}

/// Eight hex digits of the SHA-256 of `key`: a short name that differs when keys do.
pub fn short_hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes())[..4])
}

fn keyed_u64(seed: u64, salt: &str, key: &str) -> u64 {
    let digest =
        Sha256::new().chain_update(seed.to_le_bytes()).chain_update(salt.as_bytes()).chain_update([0]).chain_update(key.as_bytes()).finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn prompt_id_depends_on_roles_and_turn_boundaries() {
        let a = prompt_id(&[Message::new(Role::User, "ab")]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, prompt_id(&[Message::new(Role::User, "ab")]));
        assert_ne!(a, prompt_id(&[Message::new(Role::System, "ab")]));
        assert_ne!(prompt_id(&[Message::new(Role::User, "a"), Message::new(Role::User, "b")]), prompt_id(&[Message::new(Role::User, "ab")]),);
    }
}
