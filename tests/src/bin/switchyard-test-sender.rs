//! A client process for the real-kernel tests: joins a cgroup, enters a network namespace, sends what it is
//! asked to and reports what came of it. See `switchyard_tests::sender`.

fn main() {
    switchyard_tests::sender::process_main();
}
