//! IPVS against a real kernel: Debian's stock kernel booted under QEMU, because the host's kernel may have
//! no IPVS. One executable plays both parts:
//!
//! - on the host (what `cargo test` runs), [`driver`] packs this very executable, busybox, iproute2's `ip`
//!   and the `ip_vs` modules into an initramfs, boots the kernel with it, streams the serial console, and
//!   fails unless the guest reports that every case passed;
//! - inside the VM (`/init` sets `SWITCHYARD_IPVS_GUEST=1`), [`guest`] runs the cases of [`cases`], each in
//!   its own thread and network namespace, or, in capture mode, [`capture`] prints the kernel's raw answers
//!   for the fixtures under `tests/captures/`.
//!
//! Usage: `cargo test -p switchyard-ipvs-netlink --test vm [-- FILTER...]`; a filter selects cases by
//! substring, as libtest does, and no VM boots when none is selected. Regenerate the fixtures with
//! `SWITCHYARD_IPVS_CAPTURE=1 cargo test -p switchyard-ipvs-netlink --test vm` and review the diff.
//! Needs root (to install the packages if missing and to read /boot); without it, it fails saying so.

mod capture;
mod cases;
mod driver;
mod guest;
mod netns;
#[path = "../vmkit/mod.rs"]
mod vmkit;

/// Set by the guest's `/init`.
const GUEST_ENV: &str = "SWITCHYARD_IPVS_GUEST";
/// Prefix of the lines that carry captured datagrams.
const CAPTURE_MARKER: &str = "SWITCHYARD-CAPTURE";

fn main() {
    if std::env::var_os(GUEST_ENV).is_some() {
        guest::main()
    } else {
        driver::main()
    }
}
