//! Consistent hashing: a stable key hash and a weighted Maglev lookup table.
//!
//! - Key hash: the first 8 bytes of SHA-256(key), big-endian. Chosen for being unambiguous to
//!   document and identical on every Envoy instance, worker, architecture and release.
//! - Node choice: Maglev (Eisenbud et al., NSDI 2016). At configuration time each node gets a
//!   preference permutation of the table's slots from SHA-256 of its name, and nodes take turns
//!   claiming their next preferred free slot until the table is full; a node with weight w gets
//!   w/W of the slots (exactly, up to rounding). A request costs one hash and one array index,
//!   whatever the number of nodes. Because permutations depend on node *names*, adding or
//!   removing a node moves only about its share of keys, and renaming a node moves its keys.
//! - Failover: the n-th alternative of a key is the table entry for SHA-256(key, n): spread over
//!   the other nodes in proportion to their shares, and the same for a key everywhere.

use sha2::{Digest, Sha256};

/// Table size: a prime well above 100 × the largest node count we promise (64), so each node's
/// share is accurate to a fraction of a percent.
pub const TABLE_SIZE: usize = 65_537;

/// Largest number of nodes a table holds (indices are stored as u8).
pub const MAX_NODES: usize = 255;

/// The documented key hash: SHA-256, first 8 bytes as a big-endian integer.
pub fn key_hash(key: &[u8]) -> u64 {
    first_u64(&Sha256::digest(key))
}

/// The hash for a key's `attempt`-th alternative (attempt 0 is `key_hash`).
pub fn alternative_hash(key: &[u8], attempt: u32) -> u64 {
    if attempt == 0 {
        return key_hash(key);
    }
    let mut h = Sha256::new();
    h.update(key);
    h.update(b"\0tether-alternative\0");
    h.update(attempt.to_be_bytes());
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(b)
}

/// A Maglev lookup table over nodes given as `(name, weight)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u8>,
}

impl Maglev {
    /// Builds the table. `nodes` must be 1..=MAX_NODES with weights >= 1 (checked by the
    /// nodes table); anything else yields an empty table that [`Self::lookup`] answers `None`.
    pub fn new(nodes: &[(&str, u32)]) -> Maglev {
        let m = TABLE_SIZE as u64;
        if nodes.is_empty() || nodes.len() > MAX_NODES || nodes.iter().any(|(_, w)| *w == 0) {
            return Maglev { table: Vec::new() };
        }
        // Target slot counts proportional to weight; remainders go to the largest fractions.
        let total: u64 = nodes.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut targets: Vec<u64> = nodes.iter().map(|(_, w)| m * u64::from(*w) / total).collect();
        let mut short = m - targets.iter().sum::<u64>();
        let mut by_fraction: Vec<usize> = (0..nodes.len()).collect();
        // Ties in node order (the index is in the key): every Envoy builds the same table. An
        // unstable sort so keyed orders as the stable one did, with less code in the module.
        by_fraction.sort_unstable_by_key(|&i| {
            (std::cmp::Reverse(nodes.get(i).map_or(0, |(_, w)| m * u64::from(*w) % total)), i)
        });
        for &i in by_fraction.iter().cycle() {
            if short == 0 {
                break;
            }
            if let Some(t) = targets.get_mut(i) {
                *t += 1;
                short -= 1;
            }
        }
        let perms: Vec<(u64, u64)> = nodes
            .iter()
            .map(|(name, _)| {
                let offset = key_hash(&[b"maglev-offset\0", name.as_bytes()].concat()) % m;
                let skip = key_hash(&[b"maglev-skip\0", name.as_bytes()].concat()) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        const EMPTY: u8 = u8::MAX;
        let mut table = vec![EMPTY; TABLE_SIZE];
        let mut next = vec![0u64; nodes.len()];
        let mut filled_per_node = vec![0u64; nodes.len()];
        let mut filled = 0u64;
        while filled < m {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let (Some(done), Some(&target), Some(j)) = (filled_per_node.get(i), targets.get(i), next.get_mut(i))
                else {
                    continue;
                };
                if *done >= target {
                    continue;
                }
                // Walk this node's permutation to its next free slot. m is prime and
                // 1 <= skip < m, so the walk visits every slot.
                loop {
                    let slot = usize::try_from((offset + *j * skip) % m).unwrap_or(0);
                    *j += 1;
                    if let Some(entry) = table.get_mut(slot) {
                        if *entry == EMPTY {
                            *entry = u8::try_from(i).unwrap_or(EMPTY);
                            break;
                        }
                    }
                }
                if let Some(d) = filled_per_node.get_mut(i) {
                    *d += 1;
                }
                filled += 1;
                if filled == m {
                    break;
                }
            }
        }
        Maglev { table }
    }

    /// The node index for a hash.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        let len = u64::try_from(self.table.len()).ok().filter(|&l| l > 0)?;
        let slot = usize::try_from(hash % len).ok()?;
        self.table.get(slot).map(|&i| usize::from(i))
    }

    /// Slots per node, for tests and diagnostics.
    pub fn shares(&self, nodes: usize) -> Vec<usize> {
        let mut counts = vec![0; nodes];
        for &i in &self.table {
            if let Some(c) = counts.get_mut(usize::from(i)) {
                *c += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn key_hash_is_the_documented_sha256_prefix() {
        // Computed independently with Python hashlib: sha256(key).hexdigest()[:16].
        assert_eq!(key_hash(b"/project/5f3c"), 0x6d50_5fe5_706f_9278);
        assert_eq!(key_hash(b""), 0xe3b0_c442_98fc_1c14);
    }

    #[test]
    fn shares_follow_weights_exactly() {
        let names: Vec<String> = (0..8).map(|i| format!("node-{i}")).collect();
        let nodes: Vec<(&str, u32)> =
            names.iter().enumerate().map(|(i, n)| (n.as_str(), if i == 0 { 3 } else { 1 })).collect();
        let shares = Maglev::new(&nodes).shares(8);
        assert_eq!(shares.iter().sum::<usize>(), TABLE_SIZE);
        let unit = TABLE_SIZE as f64 / 10.0;
        assert!((shares[0] as f64 - 3.0 * unit).abs() <= 1.0, "{shares:?}");
        for &s in &shares[1..] {
            assert!((s as f64 - unit).abs() <= 1.0, "{shares:?}");
        }
    }

    #[test]
    fn invalid_inputs_give_an_empty_table_not_a_panic() {
        assert_eq!(Maglev::new(&[]).lookup(1), None);
        assert_eq!(Maglev::new(&[("a", 0)]).lookup(1), None);
        assert_eq!(Maglev::new(&[("a", 1)]).lookup(u64::MAX), Some(0));
    }
}
