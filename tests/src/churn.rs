//! Endpoint churn: many Services, one file each (the Service and its
//! EndpointSlice), rewritten one at a time as a rollout or a failing probe
//! would change them, and how long each change takes to serve. Shared by
//! the control benchmark (`rt-bench --suites churn`) and the churn drill.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::*;

/// Endpoint `j` of service `i` in a world with `eps` endpoints per service.
pub fn synthetic_addr(i: usize, j: usize, eps: usize) -> String {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 16, 0, 0)) + (i * eps + j) as u32 + 1).to_string()
}

/// `n` services `s<i>`, each in `dir/inv/s<i>.yaml` with `eps` endpoints
/// in zone e1 of region east (cluster c1); service `i`'s endpoint
/// `unready[i]` (if any) is not ready.
pub struct EndpointFiles {
    dir: PathBuf,
    eps: usize,
    unready: Vec<Option<usize>>,
}

impl EndpointFiles {
    /// Write every file.
    pub fn create(dir: &Path, n: usize, eps: usize) -> Result<Self> {
        std::fs::create_dir_all(dir.join("inv"))?;
        let f = EndpointFiles {
            dir: dir.to_path_buf(),
            eps,
            unready: vec![None; n],
        };
        for i in 0..n {
            f.write(i)?;
        }
        Ok(f)
    }

    pub fn len(&self) -> usize {
        self.unready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.unready.is_empty()
    }

    fn yaml(&self, i: usize) -> String {
        let addrs: Vec<String> = (0..self.eps)
            .map(|j| synthetic_addr(i, j, self.eps))
            .collect();
        let list: Vec<Ep<'_>> = addrs
            .iter()
            .enumerate()
            .map(|(j, a)| (a.as_str(), "e1", self.unready[i] != Some(j)))
            .collect();
        service_with_slice(
            "c1",
            "east",
            &format!("s{i}"),
            &format!("s{i}"),
            8080,
            &list,
        )
        .yaml()
    }

    /// Write service `i`'s file as a whole (a new file renamed over the
    /// old, as tools that write config do).
    fn write(&self, i: usize) -> Result<()> {
        let path = self.dir.join(format!("inv/s{i}.yaml"));
        let tmp = self.dir.join(format!("inv/.s{i}.yaml.tmp"));
        std::fs::write(&tmp, self.yaml(i))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// Toggle one endpoint of service `i`: the next one goes unready (and
    /// the one before is ready again). When it was written.
    pub fn change(&mut self, i: usize) -> Result<Instant> {
        self.unready[i] = match self.unready[i] {
            None => Some(0),
            Some(j) if j + 1 < self.eps => Some(j + 1),
            Some(_) => None,
        };
        self.write(i)?;
        Ok(Instant::now())
    }
}

/// Change `rate` endpoints per second, spread over the services, for
/// `secs`: the times the changes were written.
pub fn drive(files: &mut EndpointFiles, rate: u64, secs: f64) -> Result<Vec<Instant>> {
    let n = files.len();
    // A stride coprime with the count visits every service in turn.
    paced(rate, secs, |k| files.change((k * 7919) % n))
}

/// Call `change(k)` `rate` times a second for `secs`; what each returned
/// (when it wrote).
pub fn paced(
    rate: u64,
    secs: f64,
    mut change: impl FnMut(usize) -> Result<Instant>,
) -> Result<Vec<Instant>> {
    let total = (rate as f64 * secs) as usize;
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut written = Vec::with_capacity(total);
    for k in 0..total {
        let due = start + every * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        written.push(change(k)?);
    }
    Ok(written)
}

/// Staleness of each change: from its write to the end of the first apply
/// that began after it (1 ms after, a margin for the watcher's event: an
/// upper bound), in milliseconds; `None` if no apply came after it.
pub fn staleness(written: &[Instant], applied: &[(Instant, f64)]) -> Vec<Option<f64>> {
    let margin = Duration::from_millis(1);
    let starts: Vec<(Instant, Instant)> = applied
        .iter()
        .map(|(end, ms)| (*end - Duration::from_secs_f64(ms / 1e3), *end))
        .collect();
    written
        .iter()
        .map(|w| {
            starts
                .iter()
                .find(|(s, _)| *s >= *w + margin)
                .map(|(_, end)| end.duration_since(*w).as_secs_f64() * 1e3)
        })
        .collect()
}

/// The `p` quantile (0..=1) of `v`.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Per window of `window` seconds: (window start, changes, p50, p99, max),
/// staleness in milliseconds; changes never applied count as missing.
pub fn windows(
    written: &[Instant],
    stale: &[Option<f64>],
    window: f64,
) -> Vec<(f64, usize, usize, f64, f64, f64)> {
    let Some(first) = written.first().copied() else {
        return Vec::new();
    };
    let mut out: Vec<(f64, usize, usize, Vec<f64>)> = Vec::new();
    for (w, s) in written.iter().zip(stale) {
        let k = (w.duration_since(first).as_secs_f64() / window) as usize;
        while out.len() <= k {
            out.push((out.len() as f64 * window, 0, 0, Vec::new()));
        }
        out[k].1 += 1;
        match s {
            Some(ms) => out[k].3.push(*ms),
            None => out[k].2 += 1,
        }
    }
    out.into_iter()
        .map(|(t, n, missing, v)| {
            (
                t,
                n,
                missing,
                quantile(&v, 0.5),
                quantile(&v, 0.99),
                v.iter().copied().fold(f64::NAN, f64::max),
            )
        })
        .collect()
}
