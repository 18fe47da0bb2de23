//! The guest side: runs the selected cases (see [`vmkit::run_cases`]) and exits non-zero if any failed.

use std::time::Duration;

use crate::cases;
use crate::vmkit::{self, Args};

const WORKERS: usize = 3;
/// A run still going after this long fails (rather than the host's much later VM timeout). The cases take
/// 70 s on an idle 2-core machine, 180 s when it is busy.
pub const DEADLINE: Duration = Duration::from_secs(420);

pub fn main() {
    if let Ok(filter) = std::fs::read_to_string("/log") {
        tracing_subscriber::fmt().with_env_filter(filter.trim()).with_writer(std::io::stdout).init();
    }
    let args = Args::parse(std::fs::read_to_string("/args").unwrap_or_default().lines().map(String::from));
    let selected = cases::CASES.iter().copied().filter(|(name, _)| args.selects(name)).collect();
    vmkit::run_cases(selected, cases::ALONE, WORKERS, DEADLINE);
}
