//! The guest side: runs the selected cases, each in its own thread (so each can enter its own network
//! namespace), a few at a time, and exits non-zero if any failed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{capture, cases, Args};

const WORKERS: usize = 3;

pub fn main() {
    let mode = std::fs::read_to_string("/mode").unwrap_or_default();
    if mode.trim() == "capture" {
        capture::run();
        return;
    }
    let args = Args::parse(std::fs::read_to_string("/args").unwrap_or_default().lines().map(String::from));
    let queue: VecDeque<(&'static str, fn())> =
        cases::CASES.iter().copied().filter(|(name, _)| args.selects(name)).collect();
    let total = queue.len();
    println!("guest: running {total} cases");
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(queue));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (queue, failed) = (queue.clone(), failed.clone());
            std::thread::spawn(move || loop {
                let Some((name, case)) = queue.lock().unwrap().pop_front() else { break };
                let t = Instant::now();
                let outcome = std::thread::Builder::new().name(name.to_string()).spawn(case).unwrap().join();
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
