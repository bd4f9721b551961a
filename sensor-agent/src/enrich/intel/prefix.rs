//! Longest-prefix-match tables for IPv4 and IPv6 networks.
//!
//! # Why it exists
//! Feeds and the allowlist hold up to millions of networks of mixed prefix lengths, and every
//! flow asks whether its server is in one. One hash map per prefix length that occurs, probed
//! from the longest down, answers in a few probes whatever the number of entries, where a
//! list scan or a trie walk per flow would not.
//!
//! # What it must never do
//! - Never store a key with host bits set: a lookup masks the address per level and would
//!   miss it.
//! - Never replace a network already present: the first entry listed is the one reported.

use std::hash::Hash;

use hashbrown::HashMap;

/// An address as an integer that can be cut to a prefix.
pub(super) trait Bits: Copy + Eq + Hash {
    /// The address with every bit past `prefix` cleared.
    fn mask(self, prefix: u8) -> Self;
}

impl Bits for u32 {
    fn mask(self, prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            self & (u32::MAX << (32 - u32::from(prefix.min(32))))
        }
    }
}

impl Bits for u128 {
    fn mask(self, prefix: u8) -> u128 {
        if prefix == 0 {
            0
        } else {
            self & (u128::MAX << (128 - u32::from(prefix.min(128))))
        }
    }
}

/// One hash map per prefix length present, longest first.
#[derive(Debug)]
pub(super) struct PrefixTable<K: Bits> {
    levels: Vec<(u8, HashMap<K, u64>)>,
}

impl<K: Bits> Default for PrefixTable<K> {
    fn default() -> Self {
        PrefixTable { levels: Vec::new() }
    }
}

impl<K: Bits> PrefixTable<K> {
    /// Inserts unless the network is already there; returns whether it was inserted.
    pub(super) fn insert(&mut self, net: K, prefix: u8, value: u64) -> bool {
        let i = match self.levels.iter().position(|(p, _)| *p <= prefix) {
            Some(i) if self.levels[i].0 == prefix => i,
            Some(i) => {
                self.levels.insert(i, (prefix, HashMap::new()));
                i
            }
            None => {
                self.levels.push((prefix, HashMap::new()));
                self.levels.len() - 1
            }
        };
        match self.levels[i].1.entry(net.mask(prefix)) {
            hashbrown::hash_map::Entry::Occupied(_) => false,
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(value);
                true
            }
        }
    }

    /// The value of the longest network that holds `addr`.
    pub(super) fn lookup(&self, addr: K) -> Option<u64> {
        self.levels
            .iter()
            .find_map(|(p, map)| map.get(&addr.mask(*p)).copied())
    }

    /// Networks stored.
    pub(super) fn len(&self) -> usize {
        self.levels.iter().map(|(_, m)| m.len()).sum()
    }

    /// Prefix lengths that occur (one hash probe each for a miss).
    #[cfg(test)]
    pub(super) fn prefix_lengths(&self) -> usize {
        self.levels.len()
    }
}
