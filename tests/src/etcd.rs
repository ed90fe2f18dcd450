//! A real etcd for the tests and drills: Debian's `etcd` (etcd-server),
//! members on loopback ports, optionally with TLS (client certificates, a
//! CA made here), in a temporary directory removed on drop with the
//! processes.
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Listen, Routerd, TempDir, bin, local_vd, locality_policy, two_zones, unique, web};

/// The files of the TLS set-up.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

struct Member {
    client_port: u16,
    peer_port: u16,
    proc: Option<Child>,
}

/// An etcd cluster of `n` members on 127.0.0.1.
pub struct Etcd {
    pub dir: TempDir,
    members: Vec<Member>,
    pub tls: Option<EtcdTls>,
    initial: String,
    token: String,
}

fn free_port() -> Result<(u16, TcpListener)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok((l.local_addr()?.port(), l))
}

fn make_tls(dir: &TempDir) -> Result<EtcdTls> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "routerd test etcd CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let signed = |names: Vec<String>, client: bool| -> Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(names)?;
        p.extended_key_usages = if client {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            if client { "routerd" } else { "etcd" },
        );
        let cert = p.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (sc, sk) = signed(vec!["127.0.0.1".into(), "localhost".into()], false)?;
    let (cc, ck) = signed(vec!["routerd".into()], true)?;
    Ok(EtcdTls {
        ca: dir.write("tls/ca.pem", &ca.pem())?,
        server_cert: dir.write("tls/server.pem", &sc)?,
        server_key: dir.write("tls/server-key.pem", &sk)?,
        client_cert: dir.write("tls/client.pem", &cc)?,
        client_key: dir.write("tls/client-key.pem", &ck)?,
    })
}

impl Etcd {
    /// Start `n` members (TLS on the client port if `tls`) and wait until
    /// the cluster answers.
    pub fn start(n: usize, tls: bool) -> Result<Etcd> {
        let token = unique();
        let dir = TempDir::new(&format!("{token}-etcd"))?;
        let tls = if tls { Some(make_tls(&dir)?) } else { None };
        let mut held = Vec::new();
        let mut members = Vec::new();
        for _ in 0..n {
            let (client_port, a) = free_port()?;
            let (peer_port, b) = free_port()?;
            held.push(a);
            held.push(b);
            members.push(Member {
                client_port,
                peer_port,
                proc: None,
            });
        }
        let initial = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}=http://127.0.0.1:{}", m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        drop(held);
        let mut e = Etcd {
            dir,
            members,
            tls,
            initial,
            token,
        };
        for i in 0..n {
            e.spawn(i)?;
        }
        e.wait_healthy(Duration::from_secs(30))?;
        Ok(e)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let client = format!("{}://127.0.0.1:{}", self.scheme(), m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let data = self.dir.path.join(format!("m{i}"));
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            // One publish is one transaction (README, "Many nodes: etcd").
            .args(["--max-txn-ops", "100000"])
            .args(["--max-request-bytes", "67108864"])
            .args([
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1000",
            ])
            // Elections in well under a second on loopback.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .spawn()
            .context("starting etcd (Debian's etcd-server; `cargo xtask setup` installs it)")?;
        self.members[i].proc = Some(child);
        Ok(())
    }

    /// `etcd://` URL of every member (or of `only` those), with `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        self.url_of(&(0..self.members.len()).collect::<Vec<_>>(), prefix)
    }

    pub fn url_of(&self, only: &[usize], prefix: &str) -> String {
        let hosts: Vec<String> = only
            .iter()
            .map(|i| format!("127.0.0.1:{}", self.members[*i].client_port))
            .collect();
        format!("etcd://{}/{prefix}", hosts.join(","))
    }

    /// routerd's flags for this store (`--store` and, with TLS, its files).
    pub fn store_args(&self, url: &str) -> Vec<String> {
        let mut a = vec!["--store".to_string(), url.to_string()];
        if let Some(t) = &self.tls {
            for (flag, p) in [
                ("--store-ca", &t.ca),
                ("--store-cert", &t.client_cert),
                ("--store-key", &t.client_key),
            ] {
                a.push(flag.into());
                a.push(p.display().to_string());
            }
        }
        a
    }

    /// `etcdctl` against the members that run.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.proc.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .args(["--command-timeout=5s", "--dial-timeout=2s"]);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        let out = cmd.args(args).output().context("running etcdctl")?;
        if !out.status.success() {
            bail!(
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The store's revision now.
    pub fn revision(&self) -> Result<i64> {
        let out = self.ctl(&[
            "get",
            "/",
            "--prefix",
            "--keys-only",
            "--limit=1",
            "-w",
            "json",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["header"]["revision"]
            .as_i64()
            .context("etcdctl printed no revision")
    }

    pub fn wait_healthy(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            match self.ctl(&["endpoint", "health", "--cluster"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("etcd did not become healthy"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Kill member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].proc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start member `i` again (its data kept).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// `routerd publish` to `url` with `args`: (exit code, stdout, stderr).
    pub fn publish(&self, url: &str, args: &[&str]) -> Result<(i32, String, String)> {
        let out = Command::new(bin("routerd"))
            .arg("publish")
            .args(self.store_args(url))
            .args(args)
            .output()
            .context("running routerd publish")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// [`Etcd::publish`], which must succeed: what it printed.
    pub fn publish_ok(&self, url: &str, args: &[&str]) -> Result<String> {
        let (code, out, err) = self.publish(url, args)?;
        if code != 0 {
            bail!("publish {args:?} failed ({code}): {out}{err}");
        }
        Ok(out)
    }

    /// Which member leads now.
    pub fn leader(&self) -> Result<usize> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        for e in v.as_array().context("etcdctl endpoint status: a list")? {
            let st = &e["Status"];
            if st["header"]["member_id"] == st["leader"] {
                let ep = e["Endpoint"].as_str().unwrap_or_default();
                let port: u16 = ep.rsplit(':').next().unwrap_or_default().parse()?;
                return self
                    .members
                    .iter()
                    .position(|m| m.client_port == port)
                    .context("the leader is no member of ours");
            }
        }
        bail!("no member says it leads: {out}")
    }

    /// Each member's client port.
    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client_port).collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The world of the etcd tests and the fleet drill (the lifecycle tests'):
/// `web.t.mesh` over endpoints in the node's zone (e1), another zone (e2)
/// and another region (west).
pub fn mesh_config(ready_e1: bool) -> String {
    two_zones(ready_e1)
        .with(web("c2", "west", "web-2", &[("10.2.0.1", "w1", true)]))
        .with(local_vd("web", "web.t.mesh", "web", 8080, "HTTP"))
        .with(locality_policy())
        .yaml()
}

/// Its backends.
pub fn mesh_listens() -> Vec<Listen> {
    vec![
        Listen::tcp("10.1.0.1:8080", "e1"),
        Listen::tcp("10.1.1.1:8080", "e2"),
        Listen::tcp("10.2.0.1:8080", "west"),
    ]
}

/// [`mesh_config`] split as a mesh publishes it: `mesh/` (the mesh-wide
/// objects) and `inventory/<cluster>/` (each cluster's).
pub fn write_mesh(dir: &TempDir, ready_e1: bool) -> Result<()> {
    let mut mesh = String::new();
    let mut inv: std::collections::BTreeMap<&str, String> = Default::default();
    for doc in mesh_config(ready_e1).split("---\n") {
        if doc.trim().is_empty() {
            continue;
        }
        let inventory = doc.contains("kind: Service\n") || doc.contains("kind: EndpointSlice\n");
        let cluster = ["c1", "c2"]
            .into_iter()
            .find(|c| doc.contains(&format!("clusterName: {c}\n")));
        let out = match (inventory, cluster) {
            (true, Some(c)) => inv.entry(c).or_default(),
            _ => &mut mesh,
        };
        out.push_str(doc);
        out.push_str("---\n");
    }
    dir.write("mesh/web.yaml", &mesh)?;
    for (c, text) in inv {
        dir.write(&format!("inventory/{c}/web.yaml"), &text)?;
    }
    Ok(())
}

/// Publish both clusters' inventories, then the mesh-wide config, from
/// [`write_mesh`]'s directory.
pub fn publish_mesh(etcd: &Etcd, url: &str, dir: &TempDir) -> Result<()> {
    for c in ["c1", "c2"] {
        let inv = dir.path.join(format!("inventory/{c}"));
        etcd.publish_ok(
            url,
            &["--cluster", c, "--inventory", &inv.display().to_string()],
        )?;
    }
    etcd.publish_ok(
        url,
        &["--config", &dir.path.join("mesh").display().to_string()],
    )?;
    Ok(())
}

/// A node on the store alone (no config files), started and ready.
pub fn store_node(
    tag: &str,
    cgroup: &std::path::Path,
    etcd: &Etcd,
    url: &str,
    snapshot: &std::path::Path,
    extra: &[&str],
) -> Result<Routerd> {
    let mut args: Vec<String> = etcd.store_args(url);
    args.push("--store-snapshot".into());
    args.push(snapshot.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = Routerd::new(tag, std::path::Path::new("unused"), cgroup, &args);
    r.without_config();
    r.spawn()?;
    Ok(r)
}
