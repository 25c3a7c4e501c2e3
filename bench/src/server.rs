//! The server under test when herald-bench starts it itself (`--server-cmd`): spawn a shell command, read its URL
//! from the `herald listening on http://HOST:PORT` line every peer prints, stop it with SIGTERM, and restart it
//! (the `resume-storm` scenario). Starting the server here gives each run a fresh process and its pid for the
//! CPU/RSS readings.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running server started from a shell command.
pub struct Server {
    cmd: String,
    log: PathBuf,
    child: Option<Child>,
    /// Its process id (the command is `exec`ed, so this is the server itself, not a shell).
    pub pid: u32,
    /// `http://HOST:PORT` from its listening line.
    pub url: String,
}

impl Server {
    /// Runs `sh -c "exec CMD"` (with `PORT=0` unless `PORT` is set), its stderr appended to `log`, and waits for
    /// the listening line.
    pub async fn spawn(cmd: &str, log: PathBuf) -> Result<Self> {
        let mut s = Self {
            cmd: cmd.to_string(),
            log,
            child: None,
            pid: 0,
            url: String::new(),
        };
        s.start().await?;
        Ok(s)
    }

    async fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening the server log {}", self.log.display()))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("exec {}", self.cmd))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        if std::env::var_os("PORT").is_none() {
            command.env("PORT", "0");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the server: {}", self.cmd))?;
        self.pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(at) = line.find("listening on http://") {
                    let url = line[at + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches('/');
                    return Ok::<_, anyhow::Error>(Some(url.to_string()));
                }
            }
            Ok(None)
        })
        .await;
        let url = match url {
            Ok(Ok(Some(url))) => url,
            Ok(Ok(None)) => bail!(
                "the server exited before printing `listening on http://…`; its log: {}",
                self.log.display()
            ),
            Ok(Err(e)) => return Err(e).context("reading the server's stdout"),
            Err(_) => bail!(
                "the server printed no `listening on http://…` line within {} s; its log: {}",
                START_TIMEOUT.as_secs(),
                self.log.display()
            ),
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::task::spawn_local(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.url = url;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `STOP_TIMEOUT`; waits for the exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(self.pid) {
            // SAFETY: kill(2) on the pid of our own unreaped child cannot hit another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// Stops the server and starts the same command again; `url` and `pid` then describe the new process.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.start().await
    }

    /// Where the server's stderr goes.
    pub fn log(&self) -> &std::path::Path {
        &self.log
    }
}
