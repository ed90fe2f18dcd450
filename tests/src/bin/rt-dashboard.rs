//! The Grafana dashboard (`deploy/grafana/routerd.json`) on real data, as a
//! picture (`cargo xtask dashboard` writes `docs/dashboard.svg`): a world
//! with real backends, routerd with `--metrics-addr`, a real Prometheus
//! scraping it every second, and real clients (rt-probe over TCP and HTTP,
//! dig) for `--secs` seconds, with a config change halfway. Then every
//! panel's query is run over the window (Prometheus's range API) and drawn.
//! A panel whose query Prometheus refuses fails the run.
use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use router_tests::{
    prom::{Prometheus, Series, free_port, grafana_expr},
    *,
};

#[derive(Parser)]
struct Args {
    /// The dashboard to draw.
    #[arg(long, default_value = "deploy/grafana/routerd.json")]
    dashboard: PathBuf,
    /// Where the picture goes.
    #[arg(long, default_value = "docs/dashboard.svg")]
    out: PathBuf,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 60)]
    secs: u64,
}

/// The world's config: [`web_and_shop`] with outlier detection, and after
/// the change one more host.
fn config(extra: bool) -> String {
    let mut c = web_and_shop().with(
        Policy::outlier_detection("od", json!({"consecutiveErrors": 5}))
            .virtual_destinations_labelled("lb", "local"),
    );
    if extra {
        c = c.with(local_vd("more", "more.t.mesh", "web", 8080, "TCP"));
    }
    c.yaml()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A legend like Grafana's `{{host}}:{{port}}`.
fn legend(format: &str, s: &Series) -> String {
    let mut out = format.to_string();
    for (k, v) in &s.labels {
        out = out.replace(&format!("{{{{{k}}}}}"), v.as_str().unwrap_or(""));
    }
    // A label the series does not have is empty, as in Grafana.
    while let (Some(a), Some(b)) = (out.find("{{"), out.find("}}")) {
        if b < a {
            break;
        }
        out.replace_range(a..b + 2, "");
    }
    if out.trim().is_empty() {
        out = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "__name__" && *k != "job" && *k != "instance")
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",");
    }
    out
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "s" if v < 1.0 => format!("{:.1} ms", v * 1e3),
        "percentunit" => format!("{:.2}%", v * 100.0),
        _ if v >= 1000.0 => format!("{:.1}k", v / 1000.0),
        _ => format!("{v:.1}"),
    }
}

/// One panel at (x, y): its title, axes and series (at most 8 drawn).
fn panel(
    x: f64,
    y: f64,
    title: &str,
    unit: &str,
    t0: f64,
    t1: f64,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (w, h, left, top, bottom) = (560.0, 250.0, 60.0, 30.0, 70.0);
    let (pw, ph) = (w - left - 20.0, h - top - bottom);
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.15;
    let px = |t: f64| x + left + pw * ((t - t0) / (t1 - t0).max(1.0));
    let py = |v: f64| y + top + ph * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"#fafafa\" stroke=\"#ddd\"/>\n\
         <text x=\"{}\" y=\"{}\" font-size=\"13\" font-weight=\"bold\">{}</text>\n\
         <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">0</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{:.0} s</text>",
        x + 10.0,
        y + 18.0,
        xml(title),
        x + left,
        y + top + ph,
        x + left + pw,
        y + top + ph,
        x + left - 4.0,
        y + top + 10.0,
        fmt_value(ymax / 1.15, unit),
        x + left - 4.0,
        y + top + ph,
        x + left + pw,
        y + top + ph + 14.0,
        t1 - t0
    );
    if series.iter().all(|(_, p)| p.is_empty()) {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no data (nothing of the kind happened)</text>",
            x + w / 2.0,
            y + top + ph / 2.0
        );
    }
    for (i, (name, pts)) in series.iter().take(COLORS.len()).enumerate() {
        let color = COLORS[i];
        let line: Vec<String> = pts
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", px(*t), py(*v)))
            .collect();
        if !line.is_empty() {
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                line.join(" ")
            );
        }
        let (lx, ly) = (
            x + 10.0 + 270.0 * (i % 2) as f64,
            y + top + ph + 28.0 + 14.0 * (i / 2) as f64,
        );
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"4\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{ly}\" font-size=\"10\">{}</text>",
            ly - 5.0,
            lx + 14.0,
            xml(&name.chars().take(44).collect::<String>())
        );
    }
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn main() -> std::process::ExitCode {
    match run_dashboard() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rt-dashboard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_dashboard() -> Result<()> {
    let args = Args::parse();
    require_root();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&args.dashboard)
            .with_context(|| format!("reading {}", args.dashboard.display()))?,
    )?;
    let world = World::new(&[
        Listen::tcp("10.1.0.1:8080", "e1"),
        Listen::tcp("10.1.1.1:8080", "e2"),
    ])?;
    world.resolv_conf("10.53.0.1")?;
    world.dir.write("config/all.yaml", &config(false))?;
    let cfg = world.dir.path.join("config");
    let plan = plan(&cfg)?;
    let web = vip(&plan, "web.t.mesh", 8080, false);
    let shop = vip(&plan, "shop.t.mesh", 8080, false);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let routerd = Routerd::start(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--metrics-addr", &metrics_addr],
    )?;
    let prom = Prometheus::start(&world.dir.path.join("prometheus"), &metrics_addr)?;
    eprintln!(
        "rt-dashboard: {} s of traffic: TCP to {web}, HTTP to {shop}, DNS; a config change halfway",
        args.secs
    );
    let t0 = now();
    let start = Instant::now();
    let mut changed = false;
    let mut second = 0u64;
    while start.elapsed() < Duration::from_secs(args.secs) {
        // A load that rises and falls, so the panels have a shape.
        let wave = 1.0 + (second as f64 / 10.0).sin();
        let tcp = (20.0 + 40.0 * wave) as u64;
        let http = (5.0 + 10.0 * wave) as u64;
        world.probe(&["tcp", &web.to_string(), "--count", &tcp.to_string()])?;
        world.probe(&[
            "http",
            &shop.to_string(),
            "--path",
            "/api/x",
            "--count",
            &http.to_string(),
        ])?;
        let _ = world
            .client("dig")
            .args(["+short", "+time=1", "+tries=1", "web.t.mesh"])
            .output();
        if !changed && start.elapsed() >= Duration::from_secs(args.secs / 2) {
            world.dir.write("config/all.yaml", &config(true))?;
            changed = true;
        }
        second += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
    // The last scrape in.
    std::thread::sleep(Duration::from_secs(2));
    let t1 = now();
    let panels = dash["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    let cols = 2;
    let rows = panels.len().div_ceil(cols);
    let (w, h) = (
        560.0 * cols as f64 + 30.0,
        250.0 * rows as f64 + 20.0 * rows as f64 + 60.0,
    );
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"28\" font-size=\"18\">{} (deploy/grafana/routerd.json) on {:.0} s of real traffic: `cargo xtask dashboard`</text>\n",
        xml(dash["title"].as_str().unwrap_or("routerd")),
        t1 - t0
    );
    for (i, p) in panels.iter().enumerate() {
        let title = p["title"].as_str().unwrap_or("");
        let target = &p["targets"][0];
        let expr = target["expr"].as_str().unwrap_or("");
        let fmt = target["legendFormat"].as_str().unwrap_or("");
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        let Some(series) = prom.range(&grafana_expr(expr), t0, t1, 1.0) else {
            bail!("panel `{title}`: Prometheus refused its query `{expr}`");
        };
        let series: Vec<(String, Vec<(f64, f64)>)> = series
            .iter()
            .map(|s| (legend(fmt, s), s.points.clone()))
            .collect();
        let (x, y) = (
            10.0 + 570.0 * (i % cols) as f64,
            50.0 + 270.0 * (i / cols) as f64,
        );
        svg += &panel(x, y, title, unit, t0, t1, &series);
    }
    svg += "</svg>\n";
    std::fs::write(&args.out, svg).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("rt-dashboard: wrote {}", args.out.display());
    drop(routerd);
    Ok(())
}
