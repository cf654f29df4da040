//! The local stack of `make up` and this workspace's build: where things are, the endpoints in
//! `.stack/env`, the built binaries, fresh names, and stopping and starting the shared broker and
//! S3 server through `scripts/stack.sh`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The endpoints `make up` wrote to `.stack/env`. Panics with the fix when the stack is not up.
pub fn stack_env() -> HashMap<String, String> {
    let path = workspace_root().join(".stack/env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} not found — start the local stack with `make up`",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The stack's S3 credentials and settings (`AWS_*`), for a process that talks to its bucket.
pub fn aws_env() -> Vec<(String, String)> {
    stack_env()
        .into_iter()
        .filter(|(key, _)| key.starts_with("AWS_"))
        .collect()
}

/// The stack's Kafka bootstrap servers.
pub fn brokers() -> String {
    stack_env()["T2V_BROKERS"].clone()
}

/// A binary of this workspace, built by `cargo test --workspace` next to the test executables.
/// `T2V_TESTS_BIN_DIR` points the tests at binaries built elsewhere (e.g. an older commit's, to
/// see a new test fail on the code before its fix).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = match std::env::var_os("T2V_TESTS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>/deps")
            .to_path_buf(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built — run `cargo build --workspace` (or `make test`)",
        path.display()
    );
    path
}

/// Asserts that a finished command exited 0; the message is its stderr.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh topic name, unique to this test run.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "test.{prefix}.{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `scripts/stack.sh <command>` (`stop-s3`, `start-s3`, …): `Err` with its output when it
/// fails. Fault tests only; the stack is shared by every test binary.
pub fn stack_script(command: &str) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/stack.sh"))
        .arg(command)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run scripts/stack.sh {command}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scripts/stack.sh {command} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A shared service of the stack that fault tests take down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Kafka,
    S3,
}

impl Service {
    const ALL: [Service; 2] = [Service::Kafka, Service::S3];

    /// The `scripts/stack.sh` commands that take it down and start it again, and its name.
    fn commands(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Service::Kafka => ("kill-kafka", "start-kafka", "KAFKA"),
            Service::S3 => ("stop-s3", "start-s3", "THE S3 SERVER"),
        }
    }
}

/// Keeps the shared Kafka broker and S3 server up: whatever this took down and did not start
/// again is started when it is dropped, so a failing test leaves the stack as it found it.
/// Tests that take a service away must run alone in their test binary (cargo runs test binaries
/// one after another) or hold a lock.
#[derive(Debug, Default)]
pub struct StackGuard {
    down: Vec<Service>,
}

impl StackGuard {
    /// Kills the broker (SIGKILL) or stops the S3 server. It counts as down from before the
    /// command, so a half-done stop is undone too.
    pub fn take_down(&mut self, service: Service) -> Result<(), String> {
        if !self.down.contains(&service) {
            self.down.push(service);
        }
        stack_script(service.commands().0)
    }

    /// Starts `service` again; a no-op unless this guard took it down.
    pub fn bring_up(&mut self, service: Service) -> Result<(), String> {
        if !self.down.contains(&service) {
            return Ok(());
        }
        stack_script(service.commands().1)?;
        self.down.retain(|s| *s != service);
        Ok(())
    }
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        for service in Service::ALL {
            if let Err(e) = self.bring_up(service) {
                // No panic while unwinding: say it loudly instead.
                let (_, start, name) = service.commands();
                eprintln!("COULD NOT RESTART {name}: {e} — run `bash scripts/stack.sh {start}`");
            }
        }
    }
}
