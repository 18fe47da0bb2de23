//! The host side: builds the initramfs, boots the VM, reads the verdict from its output port (the machinery is
//! `tests/vmkit`, shared with `switchyard-ipvs`'s VM tests).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::vmkit::{self, Args, Cpio, Kernel};
use crate::{cases, CAPTURE_MARKER};

/// Debian packages the VM needs, by the file that shows each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("ip", "iproute2"),
    ("modprobe", "kmod"),
];

/// Kernel modules loaded at boot: IPVS, every scheduler, and veth for the traffic tests. Their dependencies
/// come from `modprobe --show-depends`.
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
];

/// The rest of the guest's `/init` (after [`vmkit::INIT_PREAMBLE`]).
const INIT: &str = r#"
for m in /modules/*.ko; do
  insmod "$m" || echo "init: insmod $m failed"
done
ip link set lo up
echo "init: modules loaded, starting the tests"
SWITCHYARD_IPVS_GUEST=1 /switchyard-ipvs-vm
echo "SWITCHYARD-VM-EXIT=$?"
poweroff -f
"#;

pub fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let capture = std::env::var_os("SWITCHYARD_IPVS_CAPTURE").is_some();
    let selected: Vec<&str> = cases::CASES.iter().map(|(name, _)| *name).filter(|n| args.selects(n)).collect();
    if args.list {
        for name in &selected {
            println!("{name}: test");
        }
        return;
    }
    if selected.is_empty() && !capture {
        println!("\nrunning 0 tests (no VM case matches the filters)\n");
        return;
    }
    println!("\nrunning {} IPVS cases in a VM{}", selected.len(), if capture { " (capture mode)" } else { "" });

    let started = Instant::now();
    vmkit::ensure_packages(PACKAGES);
    let kernel = vmkit::find_kernel();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ipvs-vm");
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = dir.join(format!("initramfs-{}.cpio", std::process::id()));
    build_initramfs(&kernel, &initramfs, &args, capture);
    let prepared = started.elapsed();

    let vm = vmkit::Vm {
        memory_mb: 1024,
        cpus: 2,
        timeout: vmkit::timeout(300),
        // The guest fails the run itself when it outlives its deadline (guest.rs).
        silence: crate::guest::DEADLINE + Duration::from_secs(60),
        hide: Some(CAPTURE_MARKER),
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
    if capture {
        write_captures(&run.lines);
    }
    if status != 0 {
        eprintln!("vm: the guest test program exited with status {status}");
        std::process::exit(1);
    }
    if capture {
        println!("vm: captures written; review them with git diff");
    } else {
        println!("vm: all {} cases passed", selected.len());
    }
}

fn build_initramfs(kernel: &Kernel, out: &Path, args: &Args, capture: bool) {
    let mut cpio = Cpio::default();
    for dir in ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "modules"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.char_device("dev/null", 1, 3);
    cpio.file("init", 0o755, format!("{}{INIT}", vmkit::INIT_PREAMBLE).into_bytes());
    let which = |name: &str| vmkit::which(name).unwrap_or_else(|| panic!("{name} is not installed"));
    let executables: Vec<(PathBuf, String)> = vec![
        (which("busybox"), "bin/busybox".to_string()),
        (which("ip"), "sbin/ip".to_string()),
        (std::env::current_exe().unwrap(), "switchyard-ipvs-vm".to_string()),
    ];
    vmkit::pack_executables(&mut cpio, &executables);
    vmkit::pack_modules(&mut cpio, kernel, MODULES);
    cpio.file("args", 0o644, args.to_lines().into_bytes());
    cpio.file("mode", 0o644, if capture { b"capture".to_vec() } else { b"test".to_vec() });
    std::fs::write(out, cpio.finish()).unwrap();
}

/// Writes the datagrams the guest printed in capture mode to `tests/captures/NAME.hex`.
fn write_captures(lines: &[String]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let mut files: Vec<(String, String)> = Vec::new();
    for line in lines {
        let Some(rest) = line.strip_prefix(CAPTURE_MARKER) else { continue };
        let mut words = rest.trim().splitn(3, ' ');
        let (Some(kind), Some(name), Some(data)) = (words.next(), words.next(), words.next()) else { continue };
        let text = match files.iter_mut().find(|(n, _)| n == name) {
            Some((_, text)) => text,
            None => {
                files.push((name.to_string(), String::new()));
                &mut files.last_mut().unwrap().1
            }
        };
        match kind {
            "NOTE" => text.push_str(&format!("# {data}\n")),
            "DATAGRAM" => {
                text.push('\n');
                for chunk in data.as_bytes().chunks(64) {
                    text.push_str(std::str::from_utf8(chunk).unwrap());
                    text.push('\n');
                }
            }
            _ => {}
        }
    }
    assert!(!files.is_empty(), "capture mode produced no captures");
    for (name, text) in files {
        let path = dir.join(format!("{name}.hex"));
        std::fs::write(&path, text).unwrap();
        println!("vm: wrote {}", path.display());
    }
}
