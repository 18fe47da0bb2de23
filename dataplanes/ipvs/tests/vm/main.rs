//! The IPVS dataplane against a real kernel: Debian's stock kernel booted under QEMU, because the host's
//! kernel may have no IPVS. One executable plays both parts (the harness of `switchyard-ipvs-netlink`'s VM
//! test, extended):
//!
//! - on the host (what `cargo test` runs), [`driver`] packs this very executable, busybox, iproute2's `ip`,
//!   `nft` (for the companion table) with their libraries, and the `ip_vs`, `dummy` and nf_tables modules
//!   into an initramfs, boots the kernel with it, streams the serial console, and fails unless the guest
//!   reports that every case passed;
//! - inside the VM (`/init` sets `SWITCHYARD_IPVS_DP_GUEST=1`), [`guest`] runs the cases of [`cases`], each
//!   in its own thread and network namespace (the node), with pods and an external client in namespaces of
//!   their own ([`netns`]).
//!
//! Usage: `cargo test -p switchyard-ipvs --test vm [-- FILTER...]`; a filter selects cases by substring, as
//! libtest does, and no VM boots when none is selected. Needs root (to install the packages if missing and
//! to read /boot); without it, it fails saying so.

mod cases;
mod driver;
mod guest;
mod netns;
#[path = "../../../ipvs-netlink/tests/vmkit/mod.rs"]
mod vmkit;

use vmkit::Args;

/// Set by the guest's `/init`.
const GUEST_ENV: &str = "SWITCHYARD_IPVS_DP_GUEST";

fn main() {
    if std::env::var_os(GUEST_ENV).is_some() {
        guest::main()
    } else {
        driver::main()
    }
}
