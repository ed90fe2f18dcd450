//! A real Prometheus for the metrics test and the dashboard picture:
//! started on loopback scraping routerd's `--metrics-addr` every second,
//! queried through its HTTP API with curl. Killed on drop.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result};

use crate::Proc;

/// A port nothing listens on now, on loopback of this namespace.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Grafana panel's query as Prometheus takes it: Grafana's
/// `$__rate_interval` as 15 s (four scrapes at the tools' 1 s, and at
/// least Grafana's own floor).
pub fn grafana_expr(e: &str) -> String {
    e.replace("$__rate_interval", "15s")
}

pub struct Prometheus {
    pub port: u16,
    _proc: Proc,
}

/// One series of a range query: its labels (as Prometheus prints them) and
/// its points `(unix seconds, value)`.
#[derive(Clone, Debug)]
pub struct Series {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub points: Vec<(f64, f64)>,
}

impl Prometheus {
    /// Scrape `target` (`host:port`) every second; data under `dir`.
    pub fn start(dir: &Path, target: &str) -> Result<Prometheus> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let conf = dir.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: routerd\n  static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus (cargo xtask setup installs Debian's prometheus)")?;
        Ok(Prometheus {
            port,
            _proc: Proc(child),
        })
    }

    fn api(&self, path: &str, params: &[(&str, String)]) -> Option<serde_json::Value> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-G"])
            .arg(format!("http://127.0.0.1:{}/api/v1/{path}", self.port));
        for (k, v) in params {
            cmd.args(["--data-urlencode", &format!("{k}={v}")]);
        }
        let out = cmd.output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].clone())
    }

    /// The value of the first series `q` returns now.
    pub fn query(&self, q: &str) -> Option<f64> {
        self.api("query", &[("query", q.to_string())])?[0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// Every series `q` gives from `start` to `end` (unix seconds), one
    /// point per `step` seconds. `None`: the query failed (bad PromQL).
    pub fn range(&self, q: &str, start: f64, end: f64, step: f64) -> Option<Vec<Series>> {
        let r = self.api(
            "query_range",
            &[
                ("query", q.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{step}")),
            ],
        )?;
        Some(
            r.as_array()?
                .iter()
                .map(|s| Series {
                    labels: s["metric"].as_object().cloned().unwrap_or_default(),
                    points: s["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
                        .filter(|(_, v)| v.is_finite())
                        .collect(),
                })
                .collect(),
        )
    }
}
