//! The gateway's process: its memory and CPU from `/proc`, and starting it (`--spawn`).

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};

use crate::client::BenchError;

/// How long a spawned gateway may take to print where it listens.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a spawned gateway's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;

/// Resident memory and CPU time of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    pub rss_bytes: u64,
    pub cpu_secs: f64,
}

impl ProcStats {
    /// Reads `/proc/PID/status` (VmRSS) and `/proc/PID/stat` (utime + stime).
    pub fn read(pid: u32) -> Option<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(ProcStats {
            rss_bytes: rss_kb * 1024,
            cpu_secs: (utime + stime) as f64 / ticks,
        })
    }
}

/// Environment for a gateway under benchmark: the mock without delays, no rate limits, quiet
/// logs (one info line per HTTP request would cost more than the request).
pub fn bench_env(mock_text_repeat: u32) -> Vec<(String, String)> {
    [
        ("GATEWAY_RATE_LIMITS", "off".to_owned()),
        ("GATEWAY_MOCK__FIRST_CHUNK_DELAY_MS", "0".to_owned()),
        ("GATEWAY_MOCK__REASONING_DELAY_MS", "[0,0]".to_owned()),
        ("GATEWAY_MOCK__TEXT_DELAY_MS", "[0,0]".to_owned()),
        ("GATEWAY_MOCK__TEXT_REPEAT", mock_text_repeat.to_string()),
        // BENCH_GATEWAY_LOG (a RUST_LOG filter) lets a slow run be traced: the gateways' log
        // lines are echoed to the bench's stderr, each prefixed with its process id.
        (
            "RUST_LOG",
            std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The settings that route model `fake` to the fake OpenAI-compatible upstream at `base_url`
/// (`http://ADDR/v1`), answering with `upstream_model` (a fake scenario such as `ok-20`).
pub fn fake_route_env(base_url: &str, upstream_model: &str) -> Vec<(String, String)> {
    [
        ("GATEWAY_PROVIDERS__FAKE__KIND", "openai"),
        ("GATEWAY_PROVIDERS__FAKE__BASE_URL", base_url),
        // The fake insists on a key, like OpenAI; any will do.
        (
            "GATEWAY_PROVIDERS__FAKE__API_KEY",
            crate::http::FAKE_API_KEY,
        ),
        ("GATEWAY_MODELS__FAKE__PROVIDER", "fake"),
        ("GATEWAY_MODELS__FAKE__UPSTREAM_MODEL", upstream_model),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A gateway process this bench started; killed when dropped.
pub struct SpawnedGateway {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
}

impl SpawnedGateway {
    /// Starts `binary --listen 127.0.0.1:0` with `env` and waits for its
    /// "ai-gateway listening on http://ADDR" line.
    pub async fn start(
        binary: &Path,
        env: &[(String, String)],
    ) -> Result<SpawnedGateway, BenchError> {
        let mut cmd = Command::new(binary);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::Io(format!("cannot start {}: {e}", binary.display())))?;
        let pid = child.id().unwrap_or(0);
        let tail = Arc::new(Mutex::new(String::new()));
        drain(
            child.stderr.take().expect("piped stderr"),
            tail.clone(),
            Some(pid),
        );
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(SPAWN_TIMEOUT, lines.next_line()).await;
        let addr = match first {
            Ok(Ok(Some(line))) => line
                .strip_prefix("ai-gateway listening on http://")
                .and_then(|a| a.trim().parse::<SocketAddr>().ok()),
            _ => None,
        };
        // Keep reading stdout so the gateway never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        match addr {
            Some(addr) => Ok(SpawnedGateway { addr, pid, child }),
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let stderr = tail.lock().expect("stderr tail").clone();
                Err(BenchError::Gateway(format!(
                    "{} did not start: {}",
                    binary.display(),
                    stderr.trim()
                )))
            }
        }
    }

    /// Stops the gateway (SIGTERM, then SIGKILL after five seconds).
    pub async fn stop(mut self) {
        // SAFETY: plain kill(2) on the child we started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Reads a pipe to its end, keeping the last bytes in `tail` (and echoing them when `echo`).
fn drain(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    tail: Arc<Mutex<String>>,
    echo: Option<u32>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(pid) = echo {
                eprintln!("[gateway {pid}] {line}");
            }
            let mut t = tail.lock().expect("stderr tail");
            t.push_str(&line);
            t.push('\n');
            if t.len() > STDERR_TAIL_BYTES {
                let cut = t.len() - STDERR_TAIL_BYTES;
                let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                t.drain(..cut);
            }
        }
    });
}
