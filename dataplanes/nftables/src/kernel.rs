//! The one door to the kernel: running `nft` with a script, and listing a table as JSON.
//!
//! Everything the dataplane does to the kernel goes through [`Nft`], so tests can swap in a fake and
//! inject failures.

use std::io::Write;
use std::process::{Command, Stdio};

use switchyard_model::dataplane::Error;

const DATAPLANE: &str = "nftables";

/// Access to nftables.
pub trait Nft: Send + Sync + std::fmt::Debug {
    /// Applies a script (nft syntax) as one atomic transaction.
    fn apply(&self, script: &str) -> Result<(), Error>;
    /// Lists one table as nft JSON, or `None` if the table does not exist. `what` is `table` or `counters`.
    fn list(&self, what: &str, family: &str, table: &str) -> Result<Option<String>, Error>;
}

/// The real thing: the `nft` binary (nftables 1.0 or later) of the current network namespace, or of a named
/// one (`ip netns exec NAME nft`, for tests). In the current namespace, scripts of nothing but element changes
/// of the backend maps and sets go straight over nf_tables netlink instead ([`crate::netlink`]).
#[derive(Debug, Clone)]
pub struct NftCommand {
    /// Path or name of the binary.
    pub binary: String,
    /// A network namespace (as `ip netns` names it) to run in instead of the current one.
    pub netns: Option<String>,
}

impl Default for NftCommand {
    fn default() -> Self {
        NftCommand { binary: "nft".into(), netns: None }
    }
}

impl NftCommand {
    fn command(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &self.binary]);
                c
            }
            None => Command::new(&self.binary),
        };
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn io(&self, what: &str, source: std::io::Error) -> Error {
        Error::Io { dataplane: DATAPLANE, what: format!("running {} ({what})", self.binary), source }
    }
}

impl Nft for NftCommand {
    fn apply(&self, script: &str) -> Result<(), Error> {
        // Element changes of the backend maps (an endpoint that moves) skip nft, which would first read every
        // chain of the table. Only in this process's own network namespace: `netns` is for nft alone.
        if self.netns.is_none() {
            if let Some(batch) = crate::netlink::ElementBatch::parse(script) {
                return batch.apply();
            }
        }
        let mut child = self.command().args(["-f", "-"]).spawn().map_err(|e| self.io("apply", e))?;
        // Write on a thread so a large script cannot deadlock against nft's own output; scoped, so the
        // script (tens of MB at scale) is not copied.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let (out, written) = std::thread::scope(|s| {
            let writer = s.spawn(move || stdin.write_all(script.as_bytes()));
            let out = child.wait_with_output();
            (out, writer.join().expect("writer thread does not panic"))
        });
        let out = out.map_err(|e| self.io("apply", e))?;
        if !out.status.success() {
            return Err(Error::Rejected { dataplane: DATAPLANE, message: summarize(&out.stderr) });
        }
        written.map_err(|e| self.io("apply", e))
    }

    fn list(&self, what: &str, family: &str, table: &str) -> Result<Option<String>, Error> {
        let out = self
            .command()
            .args(["-j", "list", what, family, table])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.io("list", e))?;
        if out.status.success() {
            return String::from_utf8(out.stdout)
                .map(Some)
                .map_err(|e| Error::Parse { dataplane: DATAPLANE, message: e.to_string() });
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        Err(Error::Rejected { dataplane: DATAPLANE, message: summarize(&out.stderr) })
    }
}

/// The useful part of nft's error output: the error lines, without the echoed script context.
fn summarize(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).take(5).collect();
    if errors.is_empty() { text.trim().chars().take(2000).collect() } else { errors.join("; ") }
}
