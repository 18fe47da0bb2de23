//! The guest side: runs the selected cases (see [`vmkit::run_cases`]) and exits non-zero if any failed, or,
//! in capture mode, prints the kernel's raw answers ([`capture`]).

use std::time::Duration;

use crate::vmkit::{self, Args};
use crate::{capture, cases};

const WORKERS: usize = 3;
/// A run still going after this long fails (rather than the host's much later VM timeout).
pub const DEADLINE: Duration = Duration::from_secs(150);

pub fn main() {
    let mode = std::fs::read_to_string("/mode").unwrap_or_default();
    if mode.trim() == "capture" {
        capture::run();
        return;
    }
    let args = Args::parse(std::fs::read_to_string("/args").unwrap_or_default().lines().map(String::from));
    let selected = cases::CASES.iter().copied().filter(|(name, _)| args.selects(name)).collect();
    vmkit::run_cases(selected, cases::ALONE, WORKERS, DEADLINE);
}
