//! The `routerd` command line: parse the arguments, call the library, map
//! the outcome to an exit code. Rendering lives in [`crate::report`],
//! [`crate::inspect`] and [`crate::explain`].
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::{
    compile::Health,
    config::Overrides,
    daemon::{self, RunOptions},
    datapath::{self, Pins, sys},
    events::LogFormat,
    explain, inspect, report,
};

#[derive(Parser)]
#[command(
    name = "routerd",
    version,
    about = "eBPF node router for Gloo-Mesh-shaped routing config"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines for people (`text`) or one JSON object per line (`json`;
    /// events such as `applied` and `rejected` carry typed fields).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Args, Clone, Debug)]
struct ConfigArgs {
    /// Config file or directory of *.yaml files (default: configs; for
    /// `run --store`, none: the config comes from etcd alone).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// This node's cluster (overrides RouterConfig spec.cluster).
    #[arg(long)]
    cluster: Option<String>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    zone: Option<String>,
    #[arg(long)]
    subzone: Option<String>,
    /// IPv4 VIP range, e.g. 240.240.0.0/16.
    #[arg(long)]
    vip_v4: Option<ipnet::Ipv4Net>,
    /// IPv6 VIP range, e.g. 2001:2::/48.
    #[arg(long)]
    vip_v6: Option<ipnet::Ipv6Net>,
    /// Do not serve DNS for virtual hosts (overrides RouterConfig spec.dns.enabled).
    #[arg(long)]
    no_dns: bool,
    /// Serve DNS but do not capture port-53 traffic (spec.dns.capture: false).
    #[arg(long)]
    no_dns_capture: bool,
    /// Upstream resolver, `ip` or `ip:port` (repeatable; default: resolv.conf).
    #[arg(long = "dns-upstream")]
    dns_upstreams: Vec<crate::config::types::Upstream>,
}

impl ConfigArgs {
    /// The config path, or its default.
    fn path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("configs"))
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            cluster: self.cluster.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            subzone: self.subzone.clone(),
            vip_v4: self.vip_v4,
            vip_v6: self.vip_v6,
            no_dns: self.no_dns,
            no_dns_capture: self.no_dns_capture,
            dns_upstreams: self.dns_upstreams.clone(),
        }
    }
}

#[derive(Args, Clone, Debug)]
struct StoreArgs {
    /// etcd holding the config: etcd://host:port[,host:port...]/<prefix>
    /// (one prefix per mesh; README, "Many nodes: etcd").
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// CA certificate (PEM) that signed the etcd members' certificates;
    /// turns TLS on.
    #[arg(long, value_name = "PEM")]
    store_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate auth.
    #[arg(long, value_name = "PEM", requires = "store_key")]
    store_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "PEM", requires = "store_cert")]
    store_key: Option<PathBuf>,
}

impl StoreArgs {
    fn options(&self) -> anyhow::Result<Option<crate::kvstore::StoreOptions>> {
        let Some(url) = &self.store else {
            if self.store_ca.is_some() || self.store_cert.is_some() {
                anyhow::bail!("--store-ca and --store-cert need --store");
            }
            return Ok(None);
        };
        let mut o = crate::kvstore::StoreOptions::parse(url).map_err(anyhow::Error::msg)?;
        o.ca = self.store_ca.clone();
        o.cert = self.store_cert.clone();
        o.key = self.store_key.clone();
        Ok(Some(o))
    }
}

#[derive(Args, Clone, Debug)]
struct PinArgs {
    /// bpffs directory for pinned maps and links (the layout version is appended).
    #[arg(long, default_value = "/sys/fs/bpf/router")]
    pin_root: PathBuf,
    /// Where the daemon keeps its pid and last applied plan.
    #[arg(long, default_value = "/run/routerd")]
    state_dir: PathBuf,
}

// (Built once per process: the size of its largest variant costs nothing.)
#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Run the daemon: attach, apply the config, reload on change and SIGHUP.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        pins: PinArgs,
        /// cgroup v2 directory to attach to (default: the cgroup2 mount's root).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Remove the datapath on exit instead of leaving it routing.
        #[arg(long)]
        cleanup: bool,
        /// Do not watch the config path (reload on SIGHUP only).
        #[arg(long)]
        no_watch: bool,
        /// Size of the service maps when the datapath is first created.
        #[arg(long, default_value_t = router_common::MAX_SERVICES)]
        max_services: u32,
        /// Size of the backend maps when the datapath is first created.
        #[arg(long, default_value_t = router_common::MAX_BACKENDS)]
        max_backends: u32,
        /// Open the daemon's sockets (DNS, L7 proxy and gateway listeners, and
        /// their upstream connections) in this network namespace (e.g.
        /// /var/run/netns/NAME) instead of the daemon's own.
        #[arg(long, alias = "dns-netns")]
        listen_netns: Option<PathBuf>,
        /// Accept config files and directories owned by users other than
        /// root, or writable by group or others (refused by default: whoever
        /// can write the config steers every connection of the cgroup).
        #[arg(long)]
        allow_untrusted_config: bool,
        /// Serve Prometheus metrics (`GET /metrics`) on this address, in the
        /// daemon's own network namespace (off by default; e.g.
        /// 127.0.0.1:9477).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// The workloads hand-off directory: one JSON record per pod (its
        /// namespace, name, network namespace and cgroup), written by a CNI
        /// plugin or `routerd workload add`; routerd opens DNS and L7
        /// listeners inside each (default: <state-dir>/workloads).
        #[arg(long)]
        workloads_dir: Option<PathBuf>,
        /// Worker threads of the L7 proxy, each serving its share of the
        /// connections on its own (default: one per CPU).
        #[arg(long)]
        proxy_threads: Option<usize>,
        #[command(flatten)]
        store: StoreArgs,
        /// With --store: where the node keeps its copy of etcd's keys, to
        /// start from while etcd cannot be reached.
        #[arg(long, default_value = "/var/lib/routerd/store-snapshot")]
        store_snapshot: PathBuf,
    },
    /// Validate a config as `check` does, with what etcd holds of the
    /// other scopes, and write it to etcd in one transaction (objects gone
    /// from it are deleted); an invalid config writes nothing.
    Publish {
        #[command(flatten)]
        store: StoreArgs,
        /// The mesh-wide config (file or directory of *.yaml files).
        #[arg(
            long,
            short = 'c',
            required_unless_present = "inventory",
            conflicts_with = "inventory"
        )]
        config: Option<PathBuf>,
        /// One cluster's inventory (Services, EndpointSlices, Pods), under
        /// its own prefix; needs --cluster.
        #[arg(long, requires = "cluster")]
        inventory: Option<PathBuf>,
        /// The cluster whose inventory --inventory is.
        #[arg(long, requires = "inventory")]
        cluster: Option<String>,
        /// Validate and count what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the config and print the plan summary (nothing is applied).
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the whole plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a virtual host's VIPs, tiers, endpoints and why.
    Explain {
        /// HOST or HOST:PORT
        target: String,
        #[command(flatten)]
        config: ConfigArgs,
        /// The running daemon's state directory: while a routerd runs with
        /// it, explain what that daemon serves (endpoint health included).
        #[arg(long, default_value = "/run/routerd")]
        state_dir: PathBuf,
        /// Explain the config files instead (every endpoint counted
        /// healthy), even while a daemon runs.
        #[arg(long)]
        files: bool,
        /// As this workload (`namespace/name` of a Pod in the inventory)
        /// sees the host: route tables with workloadSelectors included.
        #[arg(long)]
        workload: Option<String>,
    },
    /// Read the pinned maps: services, backends, counters.
    Inspect {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(long)]
        json: bool,
        /// A live view: connects/s per service, refreshed in place.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// How often `--watch` refreshes (e.g. 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: std::time::Duration,
        /// With `--watch`: stop after this many frames (default: until
        /// interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Stop a running daemon and remove everything it pinned.
    Stop {
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Hand workloads (pods in their own network namespaces) to the
    /// daemon, or take them back, on hosts without a CNI plugin that does.
    Workload {
        #[command(subcommand)]
        cmd: WorkloadCmd,
        /// The running daemon's state directory.
        #[arg(long, default_value = "/run/routerd", global = true)]
        state_dir: PathBuf,
        /// The hand-off directory (default: <state-dir>/workloads; the
        /// daemon's --workloads-dir).
        #[arg(long, global = true)]
        workloads_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum WorkloadCmd {
    /// Serve a pod: DNS and L7 listeners inside its network namespace.
    Add {
        /// The pod's Kubernetes namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The pod's name.
        #[arg(long)]
        name: String,
        /// Its network namespace (/var/run/netns/NAME or /proc/PID/ns/net).
        #[arg(long)]
        netns: PathBuf,
        /// Its cgroup v2 directory.
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
    /// Forget a pod: its listeners close.
    Remove {
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        name: String,
    },
    /// The records, and what the daemon serves of each.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn workload_cmd(
    cmd: WorkloadCmd,
    state_dir: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use crate::workload::{self, Workload};
    match cmd {
        WorkloadCmd::Add {
            namespace,
            name,
            netns,
            cgroup,
        } => {
            let w = Workload {
                namespace,
                name,
                netns,
                cgroup,
            };
            let path = workload::add(dir, &w)?;
            println!(
                "workload {} handed to routerd ({})",
                w.key(),
                path.display()
            );
        }
        WorkloadCmd::Remove { namespace, name } => {
            if workload::remove(dir, &namespace, &name)? {
                println!("workload {namespace}/{name} removed");
            } else {
                eprintln!(
                    "no workload {namespace}/{name} in {} (`routerd workload list` shows them)",
                    dir.display()
                );
                return Ok(ExitCode::from(1));
            }
        }
        WorkloadCmd::List { json } => {
            let (records, problems) = workload::read_dir(dir, false);
            let served = workload::read_status(state_dir);
            if json {
                println!("{}", serde_json::to_string_pretty(&served)?);
            } else {
                print!("{}", workload::render(&records, &problems, &served));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `1s`, `500ms`, `2m`: Gloo's duration syntax.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    crate::config::types::parse_duration(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{s}` is not a positive duration; e.g. 1s or 500ms"))
}

fn check(args: &ConfigArgs, json: bool) -> anyhow::Result<ExitCode> {
    let t = std::time::Instant::now();
    match daemon::build_plan(&args.path(), &args.overrides(), &Health::default()) {
        Err(e) => {
            eprint!("{e}");
            Ok(ExitCode::from(1))
        }
        Ok(plan) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", report::check(&plan, t.elapsed()));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The command line as clap sees it (what `routerd <cmd> --help` prints).
pub fn command() -> clap::Command {
    Cli::command()
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::events::init(cli.log_format);
    let result = match cli.cmd {
        Cmd::Run {
            config,
            pins,
            cgroup,
            cleanup,
            no_watch,
            max_services,
            max_backends,
            listen_netns,
            allow_untrusted_config,
            metrics_addr,
            workloads_dir,
            proxy_threads,
            store,
            store_snapshot,
        } => (|| {
            let store = store.options()?.map(|store| daemon::StoreRun {
                store,
                snapshot: store_snapshot,
            });
            let files = match (&config.config, &store) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(_)) => None,
                (None, None) => Some(config.path()),
            };
            let cgroup = match cgroup {
                Some(c) => c,
                None => sys::cgroup2_mount()?,
            };
            crate::limits::tune_allocator();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(RunOptions {
                overrides: config.overrides(),
                config: files,
                store,
                cgroup,
                pins: Pins::new(pins.pin_root),
                sizes: datapath::Sizes {
                    services: max_services,
                    backends: max_backends,
                },
                workloads_dir: workloads_dir.unwrap_or_else(|| pins.state_dir.join("workloads")),
                state_dir: pins.state_dir,
                listen_netns,
                cleanup,
                watch: !no_watch,
                allow_untrusted_config,
                metrics_addr,
                proxy_threads: proxy_threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            }))?;
            Ok(ExitCode::SUCCESS)
        })(),
        Cmd::Check { config, json } => check(&config, json),
        Cmd::Publish {
            store,
            config,
            inventory,
            cluster,
            dry_run,
        } => (|| {
            let Some(o) = store.options()? else {
                anyhow::bail!("publish needs --store etcd://host:port/<prefix>");
            };
            let (dir, scope) = match (config, inventory, cluster) {
                (Some(c), _, _) => (c, crate::config::etcd::Scope::Mesh),
                (None, Some(i), Some(c)) => (i, crate::config::etcd::Scope::Cluster(c)),
                _ => anyhow::bail!("publish needs --config DIR, or --cluster NAME --inventory DIR"),
            };
            let p = crate::kvstore::Publish {
                dir,
                scope,
                dry_run,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match rt.block_on(crate::kvstore::publish(&o, &p)) {
                Ok(r) => {
                    print!("{}", report::published(&o.url(), &p, &r));
                    Ok(ExitCode::SUCCESS)
                }
                Err(crate::kvstore::PublishError::Invalid(e)) => {
                    eprint!("{e}");
                    eprintln!("nothing was written to {}", o.url());
                    Ok(ExitCode::from(1))
                }
                Err(crate::kvstore::PublishError::Other(e)) => Err(e),
            }
        })(),
        Cmd::Explain {
            target,
            config,
            state_dir,
            files,
            workload,
        } => (|| {
            let served = if files {
                None
            } else {
                daemon::served_plan(&state_dir)
            };
            let out = if served.is_some() {
                crate::state::read_health(&state_dir)
            } else {
                Default::default()
            };
            let (plan, source) = match served {
                Some((plan, pid)) => (
                    plan,
                    format!(
                        "as served by routerd (pid {pid}, state in {}): endpoint health as it \
                         sees it; --files for the config files",
                        state_dir.display()
                    ),
                ),
                None => (
                    daemon::build_plan(&config.path(), &config.overrides(), &Health::default())
                        .map_err(anyhow::Error::msg)?,
                    format!(
                        "from the config files at {} ({}): every endpoint counted healthy",
                        config.path().display(),
                        if files {
                            "--files".to_string()
                        } else {
                            format!("no routerd runs with state in {}", state_dir.display())
                        }
                    ),
                ),
            };
            match explain::explain_health(&plan, &target, &out, workload.as_deref()) {
                Ok(text) => {
                    println!("# {source}");
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::from(1))
                }
            }
        })(),
        Cmd::Inspect {
            pins,
            json,
            watch,
            interval,
            count,
        } => (|| {
            let p = Pins::new(&pins.pin_root);
            let r = inspect::read(&p, &pins.state_dir)?;
            if watch {
                let mut prev = (r, std::time::Instant::now());
                let mut frames = 0u64;
                while count.is_none_or(|c| frames < c) {
                    std::thread::sleep(interval);
                    let now = (
                        inspect::read(&p, &pins.state_dir)?,
                        std::time::Instant::now(),
                    );
                    let secs = now.1.duration_since(prev.1).as_secs_f64();
                    let rates = inspect::rates(&prev.0, &now.0, secs);
                    // Home, clear the screen, draw (a terminal shows it in place).
                    print!(
                        "\x1b[H\x1b[2J{}",
                        inspect::render_rates(&now.0, &rates, secs)
                    );
                    use std::io::Write as _;
                    let _ = std::io::stdout().flush();
                    prev = now;
                    frames += 1;
                }
                return Ok(ExitCode::SUCCESS);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", inspect::render(&r));
            }
            Ok(ExitCode::SUCCESS)
        })(),
        Cmd::Workload {
            cmd,
            state_dir,
            workloads_dir,
        } => {
            let dir = workloads_dir.unwrap_or_else(|| state_dir.join("workloads"));
            workload_cmd(cmd, &state_dir, &dir)
        }
        Cmd::Stop { pins } => (|| {
            daemon::stop(&Pins::new(&pins.pin_root), &pins.state_dir)?;
            println!(
                "stopped; removed {}",
                Pins::new(&pins.pin_root).dir().display()
            );
            Ok(ExitCode::SUCCESS)
        })(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("routerd: {e:#}");
            ExitCode::from(2)
        }
    }
}
