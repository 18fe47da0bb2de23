//! The guest side: runs the selected cases, each in its own thread (so each can enter its own network
//! namespace), a few at a time, and exits non-zero if any failed.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{cases, Args};

const WORKERS: usize = 3;
/// A case still running after this long fails the run (rather than the host's much later VM timeout).
const DEADLINE: Duration = Duration::from_secs(240);

pub fn main() {
    if let Ok(filter) = std::fs::read_to_string("/log") {
        tracing_subscriber::fmt().with_env_filter(filter.trim()).with_writer(std::io::stdout).init();
    }
    let args = Args::parse(std::fs::read_to_string("/args").unwrap_or_default().lines().map(String::from));
    let selected: Vec<(&'static str, fn())> =
        cases::CASES.iter().copied().filter(|(name, _)| args.selects(name)).collect();
    let total = selected.len();
    let (alone, together): (Vec<_>, Vec<_>) = selected.into_iter().partition(|(name, _)| cases::ALONE.contains(name));
    println!("guest: running {total} cases");
    let started = Instant::now();
    let failed = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(Mutex::new(BTreeSet::new()));
    let watched = running.clone();
    std::thread::spawn(move || {
        std::thread::sleep(DEADLINE);
        println!("guest: still running after {}s: {:?}", DEADLINE.as_secs(), watched.lock().unwrap());
        println!("guest: test result: FAILED (deadline)");
        std::process::exit(1);
    });
    run(together, WORKERS, &failed, &running);
    run(alone, 1, &failed, &running);
    let failed = failed.lock().unwrap();
    println!(
        "\nguest: test result: {}. {} passed; {} failed; finished in {:.1}s",
        if failed.is_empty() { "ok" } else { "FAILED" },
        total - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("guest: failures: {}", failed.join(", "));
        std::process::exit(1);
    }
}

type Names = Arc<Mutex<Vec<&'static str>>>;

/// Runs the cases on `workers` threads, each case in a thread of its own; records the failed ones.
fn run(cases: Vec<(&'static str, fn())>, workers: usize, failed: &Names, running: &Arc<Mutex<BTreeSet<&'static str>>>) {
    let queue = Arc::new(Mutex::new(VecDeque::from(cases)));
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            let (queue, failed, running) = (queue.clone(), failed.clone(), running.clone());
            std::thread::spawn(move || loop {
                let Some((name, case)) = queue.lock().unwrap().pop_front() else { break };
                let t = Instant::now();
                running.lock().unwrap().insert(name);
                let outcome = std::thread::Builder::new().name(name.to_string()).spawn(case).unwrap().join();
                running.lock().unwrap().remove(name);
                let secs = t.elapsed().as_secs_f64();
                match outcome {
                    Ok(()) => println!("test {name} ... ok ({secs:.1}s)"),
                    Err(_) => {
                        println!("test {name} ... FAILED ({secs:.1}s)");
                        failed.lock().unwrap().push(name);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}
