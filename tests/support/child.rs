//! Tests that re-run their own binary as a child process: the parent side starts the child and
//! waits for what it says; the child side runs only when started that way.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

/// Kills and reaps the child process on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Re-runs this test binary as a child process running only the test `test_name`, with `envs`
/// set, and waits (at most `within`) for it to print `ready_prefix`; returns the child and the
/// rest of that line.
pub fn spawn_child_test(
    test_name: &str,
    envs: &[(&str, String)],
    ready_prefix: &str,
    within: Duration,
) -> (KillOnDrop, String) {
    let exe = std::env::current_exe().expect("path of this test binary");
    let child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-run the test binary as a child");
    let mut child = KillOnDrop(child);
    let stdout: ChildStdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let prefix = ready_prefix.to_owned();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            // libtest may print "test NAME ... " before the child's own output on the line.
            if let Some((_, rest)) = line.split_once(&prefix) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let rest = rx
        .recv_timeout(within)
        .unwrap_or_else(|_| panic!("the child test {test_name} did not print {ready_prefix:?}"));
    (child, rest)
}

/// The child side of a test that [`spawn_child_test`] runs: with every variable of `vars` set,
/// runs `body` on a runtime of its own with their values; in an ordinary test run (any of them
/// unset) does nothing.
pub fn run_if_child<const N: usize, F>(vars: [&str; N], body: impl FnOnce([String; N]) -> F)
where
    F: Future<Output = ()>,
{
    let mut values = Vec::with_capacity(N);
    for var in vars {
        let Ok(value) = std::env::var(var) else {
            return; // an ordinary test run: nothing to do
        };
        values.push(value);
    }
    let values: [String; N] = values.try_into().expect("one value a variable");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(body(values));
}
