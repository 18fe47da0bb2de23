//! The benchmark's cluster state: N Services with one TCP port and M ready endpoints each, as the daemon's
//! manifests directory reads it.
//!
//! Service `i` is `bench/svc-<i>`, ClusterIP `10.96.0.0 + i + 1`, port 80 → 8080. Service 0 is the one
//! traffic goes to: its endpoints are the backend's addresses (10.250.0.1…) and it sits alone in
//! `svc-0.yaml`, the file rewritten (atomically: write aside, rename) for the one-endpoint change. Every
//! other Service's endpoints are distinct addresses in 10.128.0.0/13, 1,000 Services to a file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::netns::backend_addr;

/// Namespace of every generated object.
pub const NAMESPACE: &str = "bench";
/// The Service port's name (and the nft key `bench/svc-0/tcp/http`).
pub const PORT_NAME: &str = "http";
/// The Service port.
pub const PORT: u16 = 80;
/// The endpoints' port.
pub const TARGET_PORT: u16 = 8080;
const PER_FILE: usize = 1000;

/// The ClusterIP of Service `i`.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32)
}

/// The endpoint addresses of Service `i` (`m` of them); Service 0's are the backend's.
pub fn endpoints(i: usize, m: usize) -> Vec<Ipv4Addr> {
    if i == 0 {
        return (0..m).map(backend_addr).collect();
    }
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 1;
    (0..m).map(|j| Ipv4Addr::from(base + (i * m + j) as u32)).collect()
}

/// One Service and its EndpointSlice as YAML.
fn service_yaml(out: &mut String, i: usize, endpoints: &[Ipv4Addr]) {
    let ip = cluster_ip(i);
    write!(
        out,
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: {NAMESPACE}\nspec:\n  clusterIP: {ip}\n  \
         clusterIPs: [{ip}]\n  ports:\n  - name: {PORT_NAME}\n    port: {PORT}\n    targetPort: {TARGET_PORT}\n    protocol: TCP\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-bench\n  namespace: {NAMESPACE}\n  \
         labels:\n    kubernetes.io/service-name: svc-{i}\naddressType: IPv4\nports:\n- name: {PORT_NAME}\n  port: {TARGET_PORT}\n  \
         protocol: TCP\nendpoints:\n"
    )
    .expect("write to String");
    for ep in endpoints {
        write!(out, "- addresses: [{ep}]\n  conditions: {{ready: true}}\n  nodeName: other-node\n")
            .expect("write to String");
    }
}

/// What a one-endpoint change does to Service 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ChangeKind {
    /// An endpoint's address changes (a pod replaced): the number of endpoints stays.
    #[default]
    Move,
    /// An endpoint is added, or removed (scaling by one): the number of endpoints changes.
    Scale,
}

/// The generated directory.
#[derive(Debug)]
pub struct Manifests {
    pub dir: PathBuf,
    m: usize,
    /// Bytes written.
    pub bytes: u64,
}

impl Manifests {
    /// Writes N Services × M endpoints into `dir` (created, or emptied of manifests).
    pub fn write(dir: &Path, n: usize, m: usize) -> anyhow::Result<Manifests> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for e in std::fs::read_dir(dir)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        let mut bytes = 0u64;
        let mut text = String::new();
        service_yaml(&mut text, 0, &endpoints(0, m));
        bytes += text.len() as u64;
        std::fs::write(dir.join("svc-0.yaml"), &text)?;
        for (chunk, start) in (1..n).step_by(PER_FILE).enumerate() {
            text.clear();
            for i in start..(start + PER_FILE).min(n) {
                service_yaml(&mut text, i, &endpoints(i, m));
            }
            bytes += text.len() as u64;
            let path = dir.join(format!("services-{chunk:05}.yaml"));
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
            f.write_all(text.as_bytes())?;
            f.flush()?;
        }
        Ok(Manifests { dir: dir.to_path_buf(), m, bytes })
    }

    /// Service 0's endpoints after change `k` (counted from 0) of `kind`: even changes move the last
    /// endpoint to the backend's spare address ([`ChangeKind::Move`]) or add that address as an endpoint
    /// ([`ChangeKind::Scale`]); odd ones go back to the original M.
    pub fn service0_after(&self, kind: ChangeKind, k: usize) -> Vec<Ipv4Addr> {
        let mut eps = endpoints(0, self.m);
        match (kind, k % 2) {
            (ChangeKind::Move, 0) => *eps.last_mut().expect("M > 0") = backend_addr(self.m),
            (ChangeKind::Scale, 0) => eps.push(backend_addr(self.m)),
            _ => {}
        }
        eps
    }

    /// Rewrites Service 0's file atomically with these endpoints.
    pub fn set_service0(&self, eps: &[Ipv4Addr]) -> anyhow::Result<()> {
        let mut text = String::new();
        service_yaml(&mut text, 0, eps);
        // Not a manifest extension, so the daemon ignores the file until it is renamed into place.
        let aside = self.dir.join("svc-0.yaml.tmp");
        std::fs::write(&aside, text)?;
        std::fs::rename(&aside, self.dir.join("svc-0.yaml"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::store::Object;

    #[test]
    fn manifests_parse_and_change_one_endpoint() {
        let dir = std::env::temp_dir().join(format!("sybench-test-{}", std::process::id()));
        let m = Manifests::write(&dir, 1002, 3).unwrap();
        let mut services = 0;
        let mut endpoints = 0;
        let mut slices = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap();
            endpoints += text.matches("- addresses: [").count();
            let (objects, skipped) = switchyard_model::manifest::parse(&text);
            assert!(skipped.is_empty(), "{skipped:?}");
            for o in objects {
                match o {
                    Object::Service(_) => services += 1,
                    Object::EndpointSlice(_) => slices += 1,
                    Object::Node(_) => panic!("no Node expected"),
                }
            }
        }
        assert_eq!((services, slices, endpoints), (1002, 1002, 1002 * 3));
        let moved = m.service0_after(ChangeKind::Move, 0);
        assert_eq!(moved, [backend_addr(0), backend_addr(1), backend_addr(3)]);
        m.set_service0(&moved).unwrap();
        let text = std::fs::read_to_string(dir.join("svc-0.yaml")).unwrap();
        assert!(text.contains(&backend_addr(3).to_string()) && !text.contains(&backend_addr(2).to_string()));
        assert!(!dir.join("svc-0.yaml.tmp").exists());
        assert_eq!(m.service0_after(ChangeKind::Move, 1), super::endpoints(0, 3));
        assert_eq!(m.service0_after(ChangeKind::Scale, 0), [backend_addr(0), backend_addr(1), backend_addr(2), backend_addr(3)]);
        assert_eq!(m.service0_after(ChangeKind::Scale, 3), super::endpoints(0, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn addresses_do_not_collide() {
        assert_eq!(cluster_ip(0).to_string(), "10.96.0.1");
        assert_eq!(cluster_ip(49_999).to_string(), "10.96.195.80");
        assert_eq!(endpoints(0, 2), vec![backend_addr(0), backend_addr(1)]);
        let last = endpoints(49_999, 10)[9];
        assert!(last < std::net::Ipv4Addr::new(10, 136, 0, 0), "{last}");
    }
}
