//! Slot tables: weights (exact rationals) -> integer slot counts. The kernel
//! picks `slot = random % count`, so a backend's share of connections is its
//! share of slots. Exact when the weights reduce to at most the target size
//! (the common cases: equal shares, 80/20, tier spill percentages); otherwise
//! the largest-remainder method over the target size, which keeps every
//! backend within one slot of its exact share (error below 1/size).
use router_common::BANK_SLOTS;

/// `num / den`, exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub num: u128,
    pub den: u128,
}

pub fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn lcm(a: u128, b: u128) -> Option<u128> {
    if a == 0 || b == 0 {
        return Some(a.max(b));
    }
    (a / gcd(a, b)).checked_mul(b)
}

impl Share {
    pub const ZERO: Share = Share { num: 0, den: 1 };
    pub fn new(num: u128, den: u128) -> Share {
        assert!(den > 0, "share with zero denominator");
        let g = gcd(num, den).max(1);
        Share {
            num: num / g,
            den: den / g,
        }
    }
    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl std::ops::Add for Share {
    type Output = Share;
    fn add(self, o: Share) -> Share {
        match lcm(self.den, o.den) {
            Some(l) => Share::new(self.num * (l / self.den) + o.num * (l / o.den), l),
            // Astronomically unlikely with our inputs; fall back to 2^60ths.
            None => {
                let f = |s: Share| s.num * (1u128 << 60) / s.den;
                Share::new(f(self) + f(o), 1u128 << 60)
            }
        }
    }
}

/// Target table size for weights that do not reduce exactly.
pub fn target_size(n: usize) -> u32 {
    (n as u32).saturating_mul(4).clamp(1024, BANK_SLOTS)
}

/// Integer slots for each `(key, weight)`, keys in the order given. Zero
/// weights get zero slots. The total is at most [`BANK_SLOTS`].
pub fn apportion<K: Clone>(weights: &[(K, Share)]) -> Vec<(K, u32)> {
    let live: Vec<(usize, Share)> = weights
        .iter()
        .enumerate()
        .filter(|(_, (_, w))| w.num > 0)
        .map(|(i, (_, w))| (i, *w))
        .collect();
    let mut out: Vec<(K, u32)> = weights.iter().map(|(k, _)| (k.clone(), 0)).collect();
    if live.is_empty() {
        return out;
    }
    let size = target_size(live.len());
    // Common denominator (or 2^60ths if it overflows).
    let common = live.iter().try_fold(1u128, |acc, (_, w)| {
        lcm(acc, w.den).filter(|l| *l < 1u128 << 100)
    });
    let ints: Vec<u128> = match common {
        Some(l) => live.iter().map(|(_, w)| w.num * (l / w.den)).collect(),
        None => live
            .iter()
            .map(|(_, w)| w.num * (1u128 << 60) / w.den)
            .collect(),
    };
    let g = ints.iter().fold(0u128, |a, b| gcd(a, *b)).max(1);
    let reduced: Vec<u128> = ints.iter().map(|x| x / g).collect();
    let sum: u128 = reduced.iter().sum();
    if sum <= u128::from(size) {
        for ((i, _), n) in live.iter().zip(&reduced) {
            out[*i].1 = *n as u32;
        }
        return out;
    }
    // Largest remainder over `size` slots.
    let s = u128::from(size);
    let mut floors: Vec<(usize, u128, u128)> = live
        .iter()
        .zip(&reduced)
        .map(|((i, _), x)| (*i, x * s / sum, x * s % sum))
        .collect();
    let given: u128 = floors.iter().map(|(_, f, _)| f).sum();
    let mut left = s - given;
    let mut by_rem: Vec<usize> = (0..floors.len()).collect();
    by_rem.sort_by(|a, b| floors[*b].2.cmp(&floors[*a].2).then(a.cmp(b)));
    for j in by_rem {
        if left == 0 {
            break;
        }
        floors[j].1 += 1;
        left -= 1;
    }
    for (i, f, _) in floors {
        out[i].1 = f as u32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_shares_are_one_slot_each() {
        let w: Vec<(u8, Share)> = (0..3).map(|i| (i, Share::new(1, 3))).collect();
        assert_eq!(apportion(&w), vec![(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn percent_splits_reduce() {
        let w = vec![
            ("a", Share::new(80, 100)),
            ("b", Share::new(20, 100)),
            ("c", Share::ZERO),
        ];
        assert_eq!(apportion(&w), vec![("a", 4), ("b", 1), ("c", 0)]);
        // 70/30 spill over 2 and 3 endpoints: 35,35,10,10,10 -> 7,7,2,2,2
        let w = vec![
            (1, Share::new(70, 200)),
            (2, Share::new(70, 200)),
            (3, Share::new(30, 300)),
            (4, Share::new(30, 300)),
            (5, Share::new(30, 300)),
        ];
        assert_eq!(
            apportion(&w).iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![7, 7, 2, 2, 2]
        );
    }

    #[test]
    fn awkward_weights_use_largest_remainder() {
        let w: Vec<(u32, Share)> = (0..7)
            .map(|i| (i, Share::new(u128::from(i) + 1, 997)))
            .collect();
        let out = apportion(&w);
        let total: u32 = out.iter().map(|x| x.1).sum();
        assert_eq!(total, 28); // 1..7 sum to 28: exact after all
        let w = vec![
            (0, Share::new(1, 3)),
            (1, Share::new(1, 7)),
            (2, Share::new(1, 1009)),
        ];
        let out = apportion(&w);
        assert!(out.iter().map(|x| x.1).sum::<u32>() <= BANK_SLOTS);
    }

    proptest! {
        /// A backend's share of slots matches its weight within one slot.
        #[test]
        fn shares_within_rounding(ws in proptest::collection::vec((0u128..1000, 1u128..1000), 1..60)) {
            let weights: Vec<(usize, Share)> = ws.iter().enumerate().map(|(i, (n, d))| (i, Share::new(*n, *d))).collect();
            let out = apportion(&weights);
            let total: u32 = out.iter().map(|x| x.1).sum();
            let wsum: f64 = weights.iter().map(|(_, w)| w.as_f64()).sum();
            if wsum == 0.0 {
                prop_assert_eq!(total, 0);
            } else {
                prop_assert!(total > 0 && total <= BANK_SLOTS);
                for ((_, w), (_, s)) in weights.iter().zip(&out) {
                    let want = w.as_f64() / wsum * f64::from(total);
                    prop_assert!((f64::from(*s) - want).abs() <= 1.0 + 1e-9,
                        "slots {} want {} of {}", s, want, total);
                    if w.num == 0 { prop_assert_eq!(*s, 0); }
                }
            }
        }
    }
}
