//! A throw-away `redis-server` for tests: started on a free loopback port in a temporary directory with
//! persistence off (or AOF with `appendfsync always`), and killed when the last handle is dropped. Tests that run
//! at the same time share one server (each uses its own key prefix); a test that stops or restarts its server
//! takes a private one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Mutex<Option<Child>>,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    /// Whether it keeps an append-only file (so a restart keeps every acknowledged write).
    aof: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A server of this test's own.
    pub fn private() -> Arc<Self> {
        Arc::new(Self::start(false))
    }

    /// A server of this test's own that writes (and fsyncs) an append-only file before it answers each write.
    #[allow(dead_code)] // not every test file that includes this module restarts a server
    pub fn private_with_aof() -> Arc<Self> {
        Arc::new(Self::start(true))
    }

    /// The server the tests running now share (a new one if none is running).
    #[allow(dead_code)] // not every test file that includes this module shares a server
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap();
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Self::private();
        *shared = Arc::downgrade(&server);
        server
    }

    fn start(aof: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self {
            child: Mutex::new(None),
            url: format!("redis://127.0.0.1:{port}"),
            port,
            aof,
            dir,
        };
        server.spawn();
        server
    }

    /// Starts the process and waits (bounded) until it answers PING.
    fn spawn(&self) {
        let aof: &[&str] = if self.aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", ""])
            .args(aof)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (./scripts/setup installs it)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the stopped server again on the same port and directory: with AOF it reloads its data, without
    /// it starts empty (what a Redis that lost its data looks like).
    #[allow(dead_code)] // not every test file that includes this module restarts a server
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }

    /// Kills the server now (the test of an unreachable Redis).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
