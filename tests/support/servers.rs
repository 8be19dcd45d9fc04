//! Real servers for the lease-store tests: a `redis-server` and an Azurite blob service, each on a
//! free loopback port, each killed when its handle is dropped (also when the test panics).
//!
//! A missing binary is a failure with instructions, never a skipped test.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::child::KillOnDrop;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// A `redis-server` of our own.
pub struct Redis {
    process: KillOnDrop,
    port: u16,
}

impl Redis {
    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Freezes the server (SIGSTOP): its connections stay open, and nothing is answered (nor
    /// expired) until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.process.0.id().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} redis-server failed");
    }

    /// Kills the server (SIGKILL) and starts a new one on the same port, with nothing in it: a
    /// store that restarted without persistence.
    pub fn restart_empty(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(process) = spawn_redis(&redis_binary(), self.port) {
                self.process = process;
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start again on port {}", self.port);
    }

    /// Sends one inline command (`EXISTS key`) and returns the first line of the answer
    /// (`:0`).
    pub fn command(&self, command: &str) -> String {
        let mut stream =
            TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect to redis-server");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("send a command to redis-server");
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n") {
            stream
                .read_exact(&mut byte)
                .expect("read redis-server's answer");
            answer.push(byte[0]);
        }
        String::from_utf8_lossy(&answer).trim_end().to_owned()
    }
}

/// Whether `key` is gone from `redis` within a second: at once, but for a release still in flight
/// (a dropped caller's, in the background) — not after a lease's TTL.
pub async fn redis_key_gone(redis: &Redis, key: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if redis.command(&format!("EXISTS {key}")) == ":0" {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn redis_binary() -> PathBuf {
    find_on_path("redis-server").unwrap_or_else(|| {
        panic!(
            "redis-server not found on PATH; the Redis lease tests need a real server. \
             Install it with `apt-get install -y redis-server`."
        )
    })
}

/// Starts `redis-server` on `port`, without persistence, and waits for PING; `None` if it exits
/// first (the port is taken) or does not answer within 10 s.
fn spawn_redis(binary: &Path, port: u16) -> Option<KillOnDrop> {
    let child = Command::new(binary)
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let mut process = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = process.0.try_wait() {
            return None;
        }
        if redis_ping(port) {
            return Some(process);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts `redis-server` on a free loopback port, without persistence, and waits for PING.
pub fn start_redis() -> Redis {
    let binary = redis_binary();
    // The port can be taken between choosing and binding it: try a few.
    for _ in 0..5 {
        let port = free_port();
        if let Some(process) = spawn_redis(&binary, port) {
            return Redis { process, port };
        }
    }
    panic!("redis-server did not start answering PING");
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// An Azurite blob service of our own, with its data in a fresh directory.
pub struct Azurite {
    process: KillOnDrop,
    port: u16,
    location: PathBuf,
}

impl Azurite {
    /// The dev account's blob endpoint, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn blob_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let _ = std::fs::remove_dir_all(&self.location);
    }
}

/// Where `azurite-blob` is: on PATH, else installed by npm under the workspace root
/// (`node_modules/.bin` or `.tools/node_modules/.bin`).
fn azurite_binary() -> PathBuf {
    if let Some(found) = find_on_path("azurite-blob") {
        return found;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["node_modules/.bin", ".tools/node_modules/.bin"] {
        let candidate = root.join(dir).join("azurite-blob");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "azurite-blob not found on PATH nor under {}/{{node_modules,.tools/node_modules}}/.bin; \
         the Blob lease tests need the real emulator. Install it with \
         `npm install --prefix .tools azurite` in the workspace root (needs Node.js: \
         `apt-get install -y nodejs npm`).",
        root.display()
    );
}

/// Starts Azurite's blob service on a free loopback port and waits until it accepts connections.
pub fn start_azurite() -> Azurite {
    let binary = azurite_binary();
    for _ in 0..5 {
        let port = free_port();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let location = std::env::temp_dir().join(format!(
            "reqwest-conflict-azurite-{}-{port}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&location).expect("create Azurite's data directory");
        let child = Command::new(&binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(&location)
            .args([
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn azurite-blob");
        let mut azurite = Azurite {
            process: KillOnDrop(child),
            port,
            location,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = azurite.process.0.try_wait() {
                break;
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return azurite;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("azurite-blob did not start listening");
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
