//! The release `switchyard` daemon, run in the proxy node's namespace on a manifests directory; its stderr
//! is kept in a file and its `synced` lines are parsed as they come.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::{self, Netns};

const HEALTHZ: &str = "127.0.0.1:10256";

/// One `synced` log line.
#[derive(Clone, Debug)]
pub struct Synced {
    /// The line's own timestamp (taken right after the dataplane's sync returned).
    pub at: SystemTime,
    pub written: u64,
    pub removed: u64,
    pub failed: u64,
    /// The dataplane's part, as the daemon measured it.
    pub elapsed_ms: u64,
}

#[derive(Debug)]
enum Line {
    Starting(SystemTime),
    Synced(Synced),
    Problem(String),
}

/// A running daemon; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    lines: Receiver<Line>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// When it logged `starting`.
    pub started_at: Option<SystemTime>,
    /// Warnings and errors it logged (the first few).
    pub problems: Vec<String>,
}

/// Parses the lines the benchmark needs out of tracing's default format:
/// `2026-01-01T00:00:00.123456Z  INFO switchyard::sync: synced dataplane="nftables" written=3 … elapsed_ms=4`.
fn parse(line: &str) -> Option<Line> {
    let mut words = line.split_whitespace();
    let at = humantime::parse_rfc3339_weak(words.next()?).ok()?;
    let level = words.next()?;
    if level == "WARN" || level == "ERROR" {
        return Some(Line::Problem(line.to_string()));
    }
    let _target = words.next()?;
    let rest: Vec<&str> = words.collect();
    match rest.first() {
        Some(&"starting") => Some(Line::Starting(at)),
        Some(&"synced") => {
            let field = |k: &str| -> u64 {
                rest.iter().find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok()).unwrap_or(0)
            };
            Some(Line::Synced(Synced {
                at,
                written: field("written"),
                removed: field("removed"),
                failed: field("failed"),
                elapsed_ms: field("elapsed_ms"),
            }))
        }
        _ => None,
    }
}

impl Daemon {
    /// Starts `binary run` in `node` on `manifests`, with no rate limit between syncs; `path_first` goes
    /// first on its PATH.
    pub fn start(
        binary: &Path,
        node: &Netns,
        manifests: &Path,
        log: &Path,
        path_first: Option<&Path>,
        extra_args: &[std::ffi::OsString],
    ) -> anyhow::Result<Daemon> {
        let mut path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        if let Some(first) = path_first {
            let mut dirs = vec![first.to_path_buf()];
            dirs.extend(std::env::split_paths(&path));
            path = std::env::join_paths(dirs).context("PATH")?;
        }
        // The eBPF dataplane (given `--ebpf-cgroup`) needs the host's /sys.
        let mut cmd = match extra_args.iter().any(|a| a == "--ebpf-cgroup") {
            true => node.command_keeping_sys(binary),
            false => node.command(binary),
        };
        let mut child = cmd
            .args(["run", "--manifests"])
            .arg(manifests)
            .args(["--node-name", "bench-node", "--min-sync-period", "0s", "--cluster-cidr", netns::CLUSTER_CIDR])
            .args(["--healthz-bind-address", HEALTHZ, "--metrics-bind-address", "127.0.0.1:10249"])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        netns::register_pid(child.id() as i32);
        let stderr = child.stderr.take().expect("piped");
        let mut file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::Builder::new().name("daemon-log".into()).spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some(l) = parse(&line) {
                    let _ = tx.send(l);
                }
            }
        })?;
        Ok(Daemon {
            child,
            lines: rx,
            reader: Some(reader),
            log: log.to_path_buf(),
            started_at: None,
            problems: Vec::new(),
        })
    }

    /// The daemon's pid (`ip netns exec` execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the daemon has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the daemon exited ({status}); its log: {}\n{}", self.log.display(), tail(&self.log, 15));
        }
        Ok(())
    }

    /// Polls `/healthz` every 10 ms until it answers 200; returns when it did.
    pub fn wait_healthy(&mut self, node: &Netns, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if node.run(healthz_ok)? {
                return Ok(Instant::now());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("/healthz did not answer 200 within {timeout:?}; daemon log: {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next `synced` line stamped at or after `after` that wrote something; waits at most `timeout`.
    pub fn wait_synced(&mut self, after: SystemTime, timeout: Duration) -> anyhow::Result<Synced> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(Line::Starting(t)) => self.started_at = Some(t),
                Ok(Line::Problem(p)) => {
                    if self.problems.len() < 10 {
                        self.problems.push(p);
                    }
                }
                Ok(Line::Synced(s)) => {
                    if s.failed > 0 {
                        bail!("the daemon's sync failed for {} Service ports; log: {}", s.failed, self.log.display());
                    }
                    if s.at >= after && s.written + s.removed > 0 {
                        return Ok(s);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.check_alive()?;
                    if left.is_zero() {
                        bail!("no `synced` line within {timeout:?}; daemon log: {}", self.log.display());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.check_alive()?;
                    bail!("the daemon closed its stderr; log: {}", self.log.display());
                }
            }
        }
    }

    /// Peak resident set size (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM")
    }

    /// CPU time so far: the daemon's own, and that of the children it has waited for (its `nft` runs).
    pub fn cpu(&self) -> anyhow::Result<(Duration, Duration)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14 … cstime 17.
        let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
        let f: Vec<u64> = rest.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
        if f.len() < 15 {
            bail!("malformed /proc/PID/stat");
        }
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as f64;
        let d = |t: u64| Duration::from_secs_f64(t as f64 / tick);
        Ok((d(f[10] + f[11]), d(f[12] + f[13])))
    }

    /// Resident set size now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS")
    }

    fn status_kib(&self, key: &str) -> anyhow::Result<u64> {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "switchyard" {
            bail!("pid {pid} is {:?}, not the daemon: cannot read its RSS", comm.trim());
        }
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    }

    /// Stops it: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        let _ = self.child.wait();
        netns::unregister_pid(pid.as_raw());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `GET /healthz`: whether it answered 200.
fn healthz_ok() -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&HEALTHZ.parse().expect("valid"), Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    head[..got].starts_with(b"HTTP/1.1 200") || head[..got].starts_with(b"HTTP/1.0 200")
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_daemon_lines() {
        let l =
            "2026-11-27T12:07:38.965352Z  INFO switchyard::sync: synced dataplane=\"nftables\" written=200 removed=1 \
                 unchanged=0 failed=0 elapsed_ms=376";
        let Some(Line::Synced(s)) = parse(l) else { panic!("not parsed") };
        assert_eq!((s.written, s.removed, s.failed, s.elapsed_ms), (200, 1, 0, 376));
        assert_eq!(s.at, humantime::parse_rfc3339("2026-11-27T12:07:38.965352Z").unwrap());
        assert!(matches!(
            parse("2026-11-27T12:07:38.567457Z  INFO switchyard: starting config=Config {"),
            Some(Line::Starting(_))
        ));
        assert!(matches!(
            parse("2026-11-27T12:07:38.567457Z  WARN switchyard::sync: sync failed"),
            Some(Line::Problem(_))
        ));
        assert!(parse("2026-11-27T12:07:38.567457Z  INFO switchyard: reading manifests dir=/x").is_none());
    }
}
