//! The peer baseline: kube-proxy's iptables-mode rules for the same Services, as `iptables-restore` input.
//!
//! The shape follows kube-proxy's proxier (iptables mode, 1.28+) for ClusterIP Services with endpoints:
//! `PREROUTING`/`OUTPUT` jump to `KUBE-SERVICES`, which has one rule per Service port matching its
//! ClusterIP and port and jumping to `KUBE-SVC-<hash>`; that chain marks traffic from outside the cluster
//! CIDR for masquerade and picks a `KUBE-SEP-<hash>` with `-m statistic --mode random --probability 1/(n-i)`
//! rules; each `KUBE-SEP` chain marks hairpin traffic and DNATs. `KUBE-SERVICES` ends with the NodePort
//! rule; the filter table has kube-proxy's forwarding rules. Kube-proxy writes Services in map order,
//! effectively random, so the Service the traffic goes to is placed in the middle of `KUBE-SERVICES`: the
//! expected number of rules a new connection walks past.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::manifests::{self, NAMESPACE, PORT, PORT_NAME, TARGET_PORT};
use crate::netns::CLUSTER_CIDR;

/// Which iptables kube-proxy would drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// x_tables (`iptables-legacy-restore`): the classic linear rule walk.
    Legacy,
    /// nf_tables through the iptables compatibility layer (`iptables-nft-restore`).
    Nft,
}

impl Backend {
    pub fn restore_binary(self) -> &'static str {
        match self {
            Backend::Legacy => "iptables-legacy-restore",
            Backend::Nft => "iptables-nft-restore",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy (x_tables)",
            Backend::Nft => "nf_tables (iptables-nft)",
        }
    }
}

/// Base32 of a 80-bit hash, 16 characters, as kube-proxy's chain-name suffixes look.
fn chain_hash(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| text.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let h = (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4));
    (0..16).map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char).collect()
}

/// Writes the rules for N Services × M endpoints to `path`; returns how many rules it holds.
pub fn write(path: &Path, n: usize, m: usize) -> anyhow::Result<usize> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut rules = 0usize;

    writeln!(w, "*filter")?;
    for c in ["KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"] {
        writeln!(w, ":{c} - [0:0]")?;
    }
    let filter = [
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ];
    for r in filter {
        writeln!(w, "{r}")?;
    }
    rules += filter.len();
    writeln!(w, "COMMIT")?;

    writeln!(w, "*nat")?;
    for c in ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS"] {
        writeln!(w, ":{c} - [0:0]")?;
    }
    let svc_chain = |i: usize| format!("KUBE-SVC-{}", chain_hash(&format!("{NAMESPACE}/svc-{i}:{PORT_NAME}tcp")));
    let sep_chain = |i: usize, ep: &str| {
        format!("KUBE-SEP-{}", chain_hash(&format!("{NAMESPACE}/svc-{i}:{PORT_NAME}tcp{ep}:{TARGET_PORT}")))
    };
    for i in 0..n {
        writeln!(w, ":{} - [0:0]", svc_chain(i))?;
        for ep in manifests::endpoints(i, m) {
            writeln!(w, ":{} - [0:0]", sep_chain(i, &ep.to_string()))?;
        }
    }
    let nat = [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    ];
    for r in nat {
        writeln!(w, "{r}")?;
    }
    rules += nat.len();
    // Service 0 (the one traffic goes to) lands in the middle of KUBE-SERVICES.
    for k in 0..n {
        let i = (k + n - n / 2) % n;
        let name = format!("{NAMESPACE}/svc-{i}:{PORT_NAME}");
        let ip = manifests::cluster_ip(i);
        let svc = svc_chain(i);
        writeln!(
            w,
            "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {PORT} -j {svc}"
        )?;
        writeln!(
            w,
            "-A {svc} ! -s {CLUSTER_CIDR} -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {PORT} -j KUBE-MARK-MASQ"
        )?;
        let eps = manifests::endpoints(i, m);
        for (j, ep) in eps.iter().enumerate() {
            let sep = sep_chain(i, &ep.to_string());
            if j + 1 < eps.len() {
                let p = 1.0 / (eps.len() - j) as f64;
                writeln!(
                    w,
                    "-A {svc} -m comment --comment \"{name} -> {ep}:{TARGET_PORT}\" -m statistic --mode random --probability {p:.10} -j {sep}"
                )?;
            } else {
                writeln!(w, "-A {svc} -m comment --comment \"{name} -> {ep}:{TARGET_PORT}\" -j {sep}")?;
            }
            writeln!(w, "-A {sep} -s {ep}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ")?;
            writeln!(
                w,
                "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}:{TARGET_PORT}"
            )?;
        }
        rules += 2 + 3 * eps.len();
    }
    writeln!(
        w,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    )?;
    rules += 1;
    writeln!(w, "COMMIT")?;
    w.flush()?;
    Ok(rules)
}
