//! The host side: builds the initramfs, boots the VM, reads the verdict from the serial console (the
//! machinery is `tests/vmkit`, shared with `tests/scenarios_vm.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::vmkit::{self, Cpio, Kernel};
use crate::{cases, Args};

/// Kernel modules loaded at boot: IPVS and every scheduler, dummy for the Service addresses, nf_tables and
/// the expressions the companion table uses, veth for the traffic tests, sctp for SCTP sockets. Their
/// dependencies come from `modprobe --show-depends`. (There is no modprobe in the guest: what is not here cannot be loaded.)
const MODULES: &[&str] = &[
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_lblc",
    "ip_vs_lblcr",
    "ip_vs_dh",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_fo",
    "ip_vs_ovf",
    "ip_vs_mh",
    "veth",
    "sctp",
    "dummy",
    "nf_tables",
    "nft_ct",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_masq",
    "nft_nat",
    "nft_chain_nat",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
];

/// The rest of the guest's `/init` (after [`vmkit::INIT_PREAMBLE`]).
const INIT: &str = r#"
for m in /modules/*.ko; do
  insmod "$m" || echo "init: insmod $m failed"
done
ip link set lo up
echo "init: modules loaded, starting the tests"
SWITCHYARD_IPVS_DP_GUEST=1 /switchyard-ipvs-dp-vm
echo "SWITCHYARD-VM-EXIT=$?"
poweroff -f
"#;

pub fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let selected: Vec<&str> = cases::CASES.iter().map(|(name, _)| *name).filter(|n| args.selects(n)).collect();
    if args.list {
        for name in &selected {
            println!("{name}: test");
        }
        return;
    }
    if selected.is_empty() {
        println!("\nrunning 0 tests (no VM case matches the filters)\n");
        return;
    }
    println!("\nrunning {} IPVS dataplane cases in a VM", selected.len());

    let started = Instant::now();
    vmkit::ensure_packages(vmkit::PACKAGES);
    let kernel = vmkit::find_kernel();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ipvs-dp-vm");
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = dir.join(format!("initramfs-{}.cpio", std::process::id()));
    build_initramfs(&kernel, &initramfs, &args);
    let prepared = started.elapsed();

    let vm = vmkit::Vm {
        memory_mb: 1024,
        cpus: 2,
        timeout: vmkit::timeout(600),
        // The guest fails the run itself when a case outlives its deadline (guest.rs).
        silence: crate::guest::DEADLINE + Duration::from_secs(60),
        hide: None,
    };
    let boot = Instant::now();
    let run = vmkit::boot_vm(&kernel, &initramfs, &vm);
    let wall = boot.elapsed();
    let _ = std::fs::remove_file(&initramfs);

    println!(
        "\nvm: kernel {} | initramfs ready in {:.1}s | VM wall time {:.1}s (boot to power-off)",
        kernel.version,
        prepared.as_secs_f64(),
        wall.as_secs_f64()
    );
    let Some(status) = run.exit else {
        panic!(
            "the VM did not report a result ({}); the guest's output (vm|) and the kernel's console \
             (vm-kernel|) are above",
            run.killed.as_deref().unwrap_or("QEMU exited: the guest crashed or /init failed")
        );
    };
    if status != 0 {
        eprintln!("vm: the guest test program exited with status {status}");
        std::process::exit(1);
    }
    println!("vm: all {} cases passed", selected.len());
}

fn build_initramfs(kernel: &Kernel, out: &Path, args: &Args) {
    let mut cpio = Cpio::default();
    for dir in ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "modules", "etc"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.char_device("dev/null", 1, 3);
    cpio.file("init", 0o755, format!("{}{INIT}", vmkit::INIT_PREAMBLE).into_bytes());
    let which = |name: &str| vmkit::which(name).unwrap_or_else(|| panic!("{name} is not installed"));
    let executables: Vec<(PathBuf, String)> = vec![
        (which("busybox"), "bin/busybox".to_string()),
        (which("ip"), "sbin/ip".to_string()),
        (which("nft"), "sbin/nft".to_string()),
        (std::env::current_exe().unwrap(), "switchyard-ipvs-dp-vm".to_string()),
    ];
    vmkit::pack_executables(&mut cpio, &executables);
    vmkit::pack_modules(&mut cpio, kernel, MODULES);
    // nft names protocols and services through these.
    for f in ["etc/protocols", "etc/services"] {
        cpio.file(f, 0o644, std::fs::read(Path::new("/").join(f)).unwrap_or_else(|e| panic!("/{f}: {e}")));
    }
    cpio.file("args", 0o644, args.to_lines().into_bytes());
    // `SWITCHYARD_VM_LOG=switchyard_ipvs=debug` on the host: the guest logs the dataplane with this filter.
    if let Ok(filter) = std::env::var("SWITCHYARD_VM_LOG") {
        cpio.file("log", 0o644, filter.into_bytes());
    }
    std::fs::write(out, cpio.finish()).unwrap();
}
