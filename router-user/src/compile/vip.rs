//! Stable VIPs: a pure function of the set of host names and the ranges, so
//! every node computes the same VIP for the same config, and a restart keeps
//! it. Each host hashes (FNV-1a 64 of its lower-cased name) to a preferred
//! address and probes linearly on collision. Hosts are placed in order of
//! (preferred address, name), so adding a host can only move a host whose
//! preferred address it collides with *and* sorts after: with n hosts in a
//! range of N addresses that is about n/N (0.5% for 300 hosts in a /16).
//! IPv6 ranges are large enough that collisions do not happen in practice.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::plan::VipRanges;

pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Usable host offsets in a range of `bits` host bits: 1 ..= 2^bits - 2
/// (network and broadcast-like addresses are never handed out).
fn usable(bits: u32) -> u128 {
    (1u128 << bits.min(127)) - 2
}

fn place(hosts: &[String], seed: &str, bits: u32) -> Result<BTreeMap<String, u128>, String> {
    let n = usable(bits);
    if hosts.len() as u128 > n {
        return Err(format!(
            "{} virtual hosts do not fit in a range with {n} usable addresses",
            hosts.len()
        ));
    }
    let mut order: Vec<(u128, &String)> = hosts
        .iter()
        .map(|h| (u128::from(fnv1a64(&format!("{seed}:{h}"))) % n, h))
        .collect();
    order.sort();
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (pref, h) in order {
        let mut off = pref;
        while taken.contains(&off) {
            off = (off + 1) % n;
        }
        taken.insert(off);
        out.insert(h.clone(), off + 1);
    }
    Ok(out)
}

/// VIPs for `hosts` (names, any case; duplicates ignored).
pub fn allocate(
    hosts: &[String],
    ranges: &VipRanges,
) -> Result<BTreeMap<String, (Ipv4Addr, Ipv6Addr)>, String> {
    let mut names: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let v4 = place(&names, "v4", 32 - u32::from(ranges.v4.prefix_len()))?;
    let v6 = place(&names, "v6", 128 - u32::from(ranges.v6.prefix_len()))?;
    let base4 = u32::from(ranges.v4.network());
    let base6 = u128::from(ranges.v6.network());
    Ok(names
        .into_iter()
        .map(|h| {
            let a = Ipv4Addr::from(base4 + v4[&h] as u32);
            let b = Ipv6Addr::from(base6 + v6[&h]);
            (h, (a, b))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ranges(v4: &str) -> VipRanges {
        VipRanges {
            v4: v4.parse().unwrap(),
            v6: "2001:2::/48".parse().unwrap(),
        }
    }

    #[test]
    fn same_hosts_same_vips_in_any_order_and_case() {
        let a = allocate(&["b.mesh".into(), "A.mesh".into()], &VipRanges::default()).unwrap();
        let b = allocate(
            &["a.mesh".into(), "b.mesh".into(), "b.mesh".into()],
            &VipRanges::default(),
        )
        .unwrap();
        assert_eq!(a, b);
        for (v4, v6) in a.values() {
            assert!(VipRanges::default().v4.contains(v4));
            assert!(VipRanges::default().v6.contains(v6));
        }
    }

    #[test]
    fn tiny_range_fills_without_network_or_broadcast() {
        let hosts: Vec<String> = (0..6).map(|i| format!("h{i}")).collect();
        let r = ranges("10.9.9.0/29"); // 6 usable
        let m = allocate(&hosts, &r).unwrap();
        let set: BTreeSet<_> = m.values().map(|(a, _)| *a).collect();
        assert_eq!(set.len(), 6);
        assert!(!set.contains(&"10.9.9.0".parse().unwrap()));
        assert!(!set.contains(&"10.9.9.7".parse().unwrap()));
        let mut seven = hosts.clone();
        seven.push("h7".into());
        assert!(allocate(&seven, &r).is_err());
    }

    proptest! {
        /// Adding a host moves no other host unless it collided with it.
        #[test]
        fn adding_a_host_keeps_others(names in proptest::collection::btree_set("[a-z]{1,8}\\.mesh", 1..40), extra in "[a-z]{1,8}\\.internal") {
            let names: Vec<String> = names.into_iter().collect();
            let r = VipRanges::default();
            let before = allocate(&names, &r).unwrap();
            let mut more = names.clone();
            more.push(extra.clone());
            let after = allocate(&more, &r).unwrap();
            let extra_pref = fnv1a64(&format!("v4:{extra}")) as u128 % usable(16);
            for (h, (v4, _)) in &before {
                if after[h].0 != *v4 {
                    let pref = fnv1a64(&format!("v4:{h}")) as u128 % usable(16);
                    // Only a host that probed through the newcomer's spot can move.
                    prop_assert!(pref <= extra_pref + names.len() as u128);
                }
            }
            let distinct: BTreeSet<_> = after.values().map(|(a, _)| *a).collect();
            prop_assert_eq!(distinct.len(), after.len());
        }
    }
}
