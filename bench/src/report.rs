//! The Markdown report: the machine, the command, one table per dataplane, the details, and the targets.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::manifests::ChangeKind;
use crate::{Args, Outcome, Peer, Results, Row};

/// What the results were measured on.
#[derive(Debug)]
pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub nft: String,
    pub iptables: String,
    pub commit: String,
    pub daemon: String,
    pub load_start: String,
}

fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

impl Machine {
    pub fn probe(daemon: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or_else(|| "unknown".into(), |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0));
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            })
            .unwrap_or_else(|| "unknown".into());
        let root = daemon.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_default();
        let mut commit = first_line(Command::new("git").arg("-C").arg(&root).args(["rev-parse", "--short", "HEAD"]));
        let dirty = Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .stderr(Stdio::null())
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if dirty {
            commit.push_str(" with uncommitted changes");
        }
        let built = std::fs::metadata(daemon)
            .and_then(|m| m.modified())
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            os,
            nft: first_line(Command::new("nft").arg("--version")),
            iptables: first_line(Command::new("iptables-legacy").arg("--version")),
            commit,
            daemon: format!("{} (built {built})", daemon.display()),
            load_start: loadavg(),
        }
    }
}

pub struct Report<'a> {
    pub machine: &'a Machine,
    pub args: &'a Args,
    pub command: String,
    pub results: &'a [Results],
    pub peers: &'a [(usize, Result<Peer, String>)],
    pub elapsed: Duration,
    pub load_end: String,
}

/// An argument as a shell would need it.
pub fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./,=:@%+".contains(c)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The times of the one-endpoint changes of one kind, in ms.
fn change_ms(r: &Row, kind: ChangeKind) -> Vec<f64> {
    r.changes.iter().filter(|c| c.kind == kind).map(|c| c.total.as_secs_f64() * 1e3).collect()
}

/// "median ms (min–max)" of the changes of one kind.
fn changes_cell(r: &Row, kind: ChangeKind) -> String {
    let ch = change_ms(r, kind);
    if ch.is_empty() {
        return "not measured".into();
    }
    let (lo, hi) = ch.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    format!("{:.1} ms ({lo:.1}–{hi:.1})", median(ch))
}

/// One line for the progress output.
pub fn summary(r: &Row) -> String {
    format!(
        "full sync {} (the kernel loads it in {} by `{}`), endpoint moved {:.1} ms, added/removed {:.1} ms, peak RSS {}, ClusterIP connect {:.2}× direct",
        secs(r.full),
        secs(r.kernel),
        r.kernel_how,
        median(change_ms(r, ChangeKind::Move)),
        median(change_ms(r, ChangeKind::Scale)),
        mib(r.rss_kib),
        r.latency.ratio()
    )
}

pub fn render(rep: &Report) -> String {
    let m = rep.machine;
    let a = rep.args;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Switchyard benchmark results\n");
    let _ = writeln!(w, "- Date: {} (took {:.0} s)", m.date, rep.elapsed.as_secs_f64());
    let _ = writeln!(w, "- Command: `{}`", rep.command);
    let _ = writeln!(w, "- Machine: {}, {} cores, {} RAM; kernel {}; {}", m.cpu, m.cores, m.memory, m.kernel, m.os);
    let _ = writeln!(w, "- Tools: {}; {}", m.nft, m.iptables);
    let _ = writeln!(w, "- Daemon: {}, commit {}", m.daemon, m.commit);
    let _ = writeln!(
        w,
        "- Load average (1, 5, 15 min) at start: {}; at end: {} ({} cores). Anything else running on the machine \
         (other builds and tests, when it is shared) inflates the absolute numbers and adds noise; the ratios \
         compare measurements taken in the same run (connect latencies interleaved).",
        m.load_start, rep.load_end, m.cores
    );
    if let Some(note) = &a.note {
        let _ = writeln!(w, "- Note: {note}");
    }
    let _ = writeln!(
        w,
        "- Each size: {} Services × {} endpoints; {} one-endpoint changes of each kind; {} connects per target after 50 warm-up rounds.\n",
        a.sizes.iter().map(|n| thousands(*n)).collect::<Vec<_>>().join(", "),
        a.endpoints,
        a.changes,
        a.connects
    );

    for Results { name, title, rows, place, peers } in rep.results {
        let peers = peers.as_deref().unwrap_or(rep.peers);
        let peer_of = |n: usize| peers.iter().find(|(pn, _)| *pn == n).map(|(_, p)| p);
        let _ = writeln!(w, "## {title}\n");
        if let Some(place) = place {
            let _ = writeln!(
                w,
                "Measured in a VM: {place}. Everything there runs several times slower than on the host: compare \
                 this table's ratios (each taken in the VM, the kube-proxy peer too) with the other tables, not \
                 its absolute times.\n"
            );
        }
        if rows.iter().all(|(_, o)| matches!(o, Outcome::Unavailable(_))) {
            let why =
                rows.iter().find_map(|(_, o)| if let Outcome::Unavailable(w) = o { Some(w.as_str()) } else { None });
            let _ = writeln!(w, "{}.\n", why.unwrap_or("not run"));
            continue;
        }
        let _ = writeln!(
            w,
            "| Services × endpoints | full sync | kernel load of the same state (the daemon's transaction) | ratio | one-endpoint change: address moved (median, min–max) | endpoint added/removed | daemon peak RSS | ClusterIP connect vs direct | vs direct through the proxy node | kube-proxy iptables: ClusterIP connect vs direct |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
        for (n, o) in rows {
            let size = format!("{} × {}", thousands(*n), a.endpoints);
            let peer = match peer_of(*n) {
                Some(Ok(p)) => format!(
                    "{:.2}× ({:.0} vs {:.0} µs)",
                    p.latency.ratio(),
                    p.latency.cluster_ip.median(),
                    p.latency.bare.median()
                ),
                Some(Err(_)) => "failed".into(),
                None => "not run".into(),
            };
            match o {
                Outcome::Measured(r) => {
                    let _ = writeln!(
                        w,
                        "| {size} | {} | {} (`{}`) | {:.1}× | {} | {} | {} | {:.2}× ({:.0} vs {:.0} µs) | {:.2}× (vs {:.0} µs) | {peer} |",
                        secs(r.full),
                        secs(r.kernel),
                        r.kernel_how,
                        r.full.as_secs_f64() / r.kernel.as_secs_f64(),
                        changes_cell(r, ChangeKind::Move),
                        changes_cell(r, ChangeKind::Scale),
                        mib(r.rss_kib),
                        r.latency.ratio(),
                        r.latency.cluster_ip.median(),
                        r.latency.bare.median(),
                        r.latency.cluster_ip.median() / r.latency.direct.median(),
                        r.latency.direct.median()
                    );
                }
                Outcome::Unavailable(why) => {
                    let _ = writeln!(w, "| {size} | {why} | | | | | | | | {peer} |");
                }
                Outcome::Failed(e) => {
                    let _ = writeln!(
                        w,
                        "| {size} | failed: {} | | | | | | | | {peer} |",
                        e.replace('|', "/").replace('\n', " ")
                    );
                }
            }
        }
        let _ = writeln!(w);
        details(w, rows, a.endpoints, name);
    }

    if !rep.peers.is_empty() {
        peer_table(w, a, rep.peers, "");
    }
    for r in rep.results {
        if let (Some(place), Some(peers)) = (&r.place, &r.peers) {
            if !peers.is_empty() {
                peer_table(w, a, peers, &format!(", in the {} VM ({place})", r.title));
            }
        }
    }

    targets(w, rep);
    let _ = writeln!(
        w,
        "\nHow each figure is taken: [bench/README.md](README.md). \"Direct\" is a connect to the backend through a \
         node with no proxy rules (same hops); the ratios divide medians measured in the same run."
    );
    s
}

/// Three table cells: median / p90 of the bare-node, through-the-proxy-node and ClusterIP connects, in µs.
fn latency_cells(l: &crate::probe::Latency) -> String {
    let cell = |x: &crate::probe::Samples| format!("{:.0} / {:.0}", x.median(), x.quantile(0.9));
    format!("{} | {} | {}", cell(&l.bare), cell(&l.direct), cell(&l.cluster_ip))
}

fn peer_table(w: &mut String, a: &Args, peers: &[(usize, Result<Peer, String>)], where_: &str) {
    let _ = writeln!(w, "## Peer baseline: kube-proxy iptables mode ({}){where_}\n", a.iptables.name());
    let _ = writeln!(
        w,
        "kube-proxy's rule shape for the same Services (one `KUBE-SERVICES` rule per Service, per-Service chains \
         with `statistic` probability rules, per-endpoint DNAT chains; the measured Service in the middle of \
         `KUBE-SERVICES`), loaded with `{}` into a proxy node of its own.\n",
        a.iptables.restore_binary()
    );
    let _ = writeln!(w, "| Services × endpoints | rules | iptables-restore | connect µs, median / p90: direct (bare node) | via the proxy node, not a Service | ClusterIP | ClusterIP vs direct |");
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for (n, p) in peers {
        let size = format!("{} × {}", thousands(*n), a.endpoints);
        match p {
            Ok(p) => {
                let _ = writeln!(
                    w,
                    "| {size} | {} | {} | {} | {:.2}× |",
                    thousands(p.rules),
                    secs(p.load),
                    latency_cells(&p.latency),
                    p.latency.ratio()
                );
            }
            Err(e) => {
                let _ = writeln!(w, "| {size} | failed: {} | | | | | |", e.replace('|', "/").replace('\n', " "));
            }
        }
    }
    let _ = writeln!(w);
}

fn details(w: &mut String, rows: &[(usize, Outcome)], m: usize, dataplane: &str) {
    let measured: Vec<&Row> =
        rows.iter().filter_map(|(_, o)| if let Outcome::Measured(r) = o { Some(&**r) } else { None }).collect();
    if measured.is_empty() {
        return;
    }
    let _ = writeln!(w, "Full sync, where the time goes (from the daemon's log):\n");
    let _ = writeln!(
        w,
        "| Services × endpoints | manifests | start → first sync begins (read, parse, model) | first sync (the dataplane's part) | → /healthz 200 | \
         CPU until then: daemon / its `nft` | the transaction | its `{kernel}` in a fresh namespace | `nft list table` of the result | `{kernel}` of that listing |",
        kernel = measured[0].kernel_how
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &measured {
        let listing = match &r.listing {
            Some(l) => (
                secs(l.list),
                format!("{} ({} lines, {:.1} MiB)", secs(l.load), thousands(l.size.0), l.size.1 as f64 / 1048576.0),
            ),
            None if dataplane == "nftables" => ("not measured (`--list-max`)".to_string(), String::new()),
            None => ("not measured (its state is not an nftables table)".to_string(), String::new()),
        };
        let _ = writeln!(
            w,
            "| {} × {m} | {:.1} MiB | {} | {} | {} | {} / {} | {} lines, {:.1} MiB | {}{} | {} | {} |",
            thousands(r.n),
            r.manifest_bytes as f64 / 1048576.0,
            secs(r.before_sync),
            secs(Duration::from_millis(r.sync_ms)),
            secs(r.full),
            secs(r.full_cpu.0),
            secs(r.full_cpu.1),
            thousands(r.kernel_input.0),
            r.kernel_input.1 as f64 / 1048576.0,
            secs(r.kernel),
            if r.kernel_parts.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = r.kernel_parts.iter().map(|(how, d)| format!("{how} {}", secs(*d))).collect();
                format!(" ({})", parts.join(" + "))
            },
            listing.0,
            listing.1
        );
    }
    let _ = writeln!(w, "\nDaemon memory: peak (VmHWM) and at the end of the run (VmRSS):\n");
    let _ = writeln!(w, "| Services × endpoints | peak | end |");
    let _ = writeln!(w, "|---|---|---|");
    for r in &measured {
        let _ = writeln!(w, "| {} × {m} | {} | {} |", thousands(r.n), mib(r.rss_kib), mib(r.rss_end_kib));
    }
    let _ =
        writeln!(w, "\nOne-endpoint changes: manifest renamed into place → `synced` logged (the dataplane's part):\n");
    let _ = writeln!(w, "| Services × endpoints | address moved, each | endpoint added, removed, … each |");
    let _ = writeln!(w, "|---|---|---|");
    for r in &measured {
        let each = |kind: ChangeKind| -> String {
            let v: Vec<String> = r
                .changes
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| format!("{:.1} ms ({} ms)", c.total.as_secs_f64() * 1e3, c.dataplane_ms))
                .collect();
            v.join(", ")
        };
        let _ = writeln!(w, "| {} × {m} | {} | {} |", thousands(r.n), each(ChangeKind::Move), each(ChangeKind::Scale));
    }
    let _ = writeln!(w, "\nconnect() latency, µs, median / p90:\n");
    let _ = writeln!(w, "| Services × endpoints | direct (bare node) | via the proxy node, not a Service | ClusterIP | ClusterIP vs direct | ClusterIP vs via the proxy node |");
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for r in &measured {
        let l = &r.latency;
        let _ = writeln!(
            w,
            "| {} × {m} | {} | {:.2}× | {:.2}× |",
            thousands(r.n),
            latency_cells(l),
            l.ratio(),
            l.cluster_ip.median() / l.direct.median()
        );
    }
    let problems: Vec<&String> = measured.iter().flat_map(|r| &r.problems).collect();
    if !problems.is_empty() {
        let _ = writeln!(w, "\nThe daemon logged warnings or errors:\n");
        for p in problems {
            let _ = writeln!(w, "    {p}");
        }
    }
    let _ = writeln!(w);
}

/// The targets, checked against what was measured.
fn targets(w: &mut String, rep: &Report) {
    let _ = writeln!(w, "## Targets\n");
    let rows = |name: &str| -> Vec<&Row> {
        rep.results
            .iter()
            .filter(|r| r.name == name)
            .flat_map(|r| &r.rows)
            .filter_map(|(_, o)| if let Outcome::Measured(r) = o { Some(&**r) } else { None })
            .collect()
    };
    let nft = rows("nftables");
    let at_50k = nft.iter().find(|r| r.n == 50_000 && rep.args.endpoints == 10);
    let verdict = |value: f64, target: f64, unit: &str| {
        if value <= target {
            format!("**met** ({value:.2}{unit})")
        } else {
            format!("**missed** by {:.0}% ({value:.2}{unit} against {target}{unit})", (value / target - 1.0) * 100.0)
        }
    };
    let not_measured = "not measured in this run (needs `--sizes …,50000 --endpoints 10`)".to_string();
    let full = at_50k.map_or(not_measured.clone(), |r| verdict(r.full.as_secs_f64(), 10.0, " s"));
    let _ = writeln!(w, "- 50,000 Services × 10 endpoints fully programmed by nftables in under 10 s: {full}");
    let change = at_50k.map_or(not_measured.clone(), |r| {
        format!(
            "address moved {}; endpoint added/removed {}",
            verdict(median(change_ms(r, ChangeKind::Move)), 20.0, " ms"),
            verdict(median(change_ms(r, ChangeKind::Scale)), 20.0, " ms")
        )
    });
    let _ = writeln!(w, "- One-endpoint change under 20 ms at 50,000 Services (medians): {change}");
    let worst = nft.iter().map(|r| (r.n, r.latency.ratio())).max_by(|a, b| a.1.total_cmp(&b.1));
    let lat = worst.map_or("not measured".to_string(), |(n, x)| {
        let v = verdict(x, 1.1, "×");
        format!("{v}, worst at {} Services, against a direct connect through a node without proxy rules", thousands(n))
    });
    let _ = writeln!(w, "- ClusterIP connect latency within 1.1× of direct at any N (nftables): {lat}");
    let same = nft
        .iter()
        .map(|r| (r.n, r.latency.cluster_ip.median() / r.latency.direct.median()))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((n, x)) = same {
        let v = verdict(x, 1.1, "×");
        let _ = writeln!(
            w,
            "  - against a direct connect through the same proxy node (conntrack and the nat hooks paid on both): {v}, worst at {} Services",
            thousands(n)
        );
    }
    let ebpf = rows("ebpf");
    let worst = |of: &dyn Fn(&Row) -> f64| ebpf.iter().map(|r| (r.n, of(r))).max_by(|a, b| a.1.total_cmp(&b.1));
    match (worst(&|r| r.latency.ratio()), worst(&|r| r.latency.cluster_ip.median() / r.latency.direct.median())) {
        (Some((n, x)), Some((m, y))) => {
            let _ = writeln!(
                w,
                "- eBPF within 1.02×: {}, worst at {} Services, against a direct connect through a node without proxy rules; \
                 against a direct connect through the same proxy node: {}, worst at {} Services",
                verdict(x, 1.02, "×"),
                thousands(n),
                verdict(y, 1.02, "×"),
                thousands(m)
            );
        }
        _ => {
            let _ = writeln!(w, "- eBPF within 1.02×: not measured in this run (needs `--dataplanes …,ebpf`)");
        }
    }
    let rss = at_50k.map_or(not_measured, |r| verdict(r.rss_kib as f64 / 1024.0, 200.0, " MiB"));
    let _ = writeln!(w, "- Daemon RSS under 200 MiB at 50,000 × 10: {rss}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(50_000), "50,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(shell_quote("--sizes"), "--sizes");
        assert_eq!(shell_quote("a b's"), "'a b'\\''s'");
        assert_eq!(secs(Duration::from_millis(1500)), "1.50 s");
        assert_eq!(secs(Duration::from_millis(15)), "15 ms");
    }
}
