//! Deterministic Stripe-style ids (`cus_…`, `sub_…`, `cs_test_…`) from a seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Generates ids; the same seed and the same sequence of requests yield the same ids.
#[derive(Debug)]
pub struct IdGen {
    rng: SmallRng,
}

impl IdGen {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// `prefix` + `_` + a random base62 tail of Stripe's usual length for that prefix.
    pub fn next(&mut self, prefix: &str) -> String {
        let len = match prefix {
            "cs_test" => 58,
            "whsec" => 32,
            "cus" | "prod" | "si" | "clock" | "bps" | "dp" | "promo" => 14,
            _ => 24,
        };
        format!("{prefix}_{}", self.tail(len))
    }

    /// A random base62 string of `len` characters.
    pub fn tail(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(ALPHABET[self.rng.gen_range(0..ALPHABET.len())]))
            .collect()
    }

    /// A uniformly distributed float in `[0, 1)`, for probability knobs.
    pub fn unit(&mut self) -> f64 {
        self.rng.gen::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_yields_same_ids() {
        let mut a = IdGen::new(7);
        let mut b = IdGen::new(7);
        assert_eq!(a.next("cus"), b.next("cus"));
        assert_eq!(a.next("sub"), b.next("sub"));
    }

    #[test]
    fn ids_have_stripe_prefixes_and_lengths() {
        let mut g = IdGen::new(1);
        let cus = g.next("cus");
        assert!(cus.starts_with("cus_") && cus.len() == 18, "{cus}");
        let cs = g.next("cs_test");
        assert!(cs.starts_with("cs_test_") && cs.len() == 66, "{cs}");
    }
}
