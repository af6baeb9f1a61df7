//! Real processes for cluster tests: a private `redis-server`, `gamerelay` nodes (the binary
//! cargo built for these tests), HAProxy in front, and an in-process TCP proxy that a test
//! uses to cut a node off from Redis.
//!
//! Everything listens on free loopback ports and is killed when its handle is dropped, also
//! when the test panics; each child also gets `PR_SET_PDEATHSIG`, so nothing outlives a test
//! process killed from outside. Output of every process goes to a file under
//! `target/tmp/cluster-tests/`; when a test panics, the last lines of each are printed (the
//! test harness shows them with the failure) and the directory is kept.
//!
//! External tools are looked up on `PATH` (plus `/usr/sbin`, `/usr/local/sbin`, `/usr/bin`);
//! override with `GAMERELAY_TEST_REDIS_SERVER`, `GAMERELAY_TEST_REDIS_CLI`,
//! `GAMERELAY_TEST_HAPROXY`, `GAMERELAY_TEST_OPENSSL`. A test whose tools are missing is skipped with a message, unless
//! `GAMERELAY_REQUIRE_CLUSTER_TOOLS=1` (set by `scripts/test`), which makes it fail instead.
//! `GAMERELAY_TEST_NODE_LOG` sets the nodes' `--log` filter (default `warn`);
//! `GAMERELAY_TEST_KEEP_DIRS=1` keeps the output directories of passing tests too.
//!
//! Children are spawned from the thread that runs the test (never from `spawn_blocking`,
//! whose threads end while the child should live on: the parent-death signal follows the
//! spawning thread).
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The shared secret every test node gets (`--cluster-secret`; at least 16 bytes).
pub const CLUSTER_SECRET: &str = "gamerelay-cluster-tests-secret-0123456789";
/// How long a process may take to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an HTTP probe may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll interval of every bounded wait.
pub const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// tools, ports, directories

/// An external program the harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    RedisServer,
    /// `redis-cli`, for `--cluster create` (Debian: in redis-tools, which redis-server needs).
    RedisCli,
    Haproxy,
    Openssl,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::RedisServer => "redis-server",
            Tool::RedisCli => "redis-cli",
            Tool::Haproxy => "haproxy",
            Tool::Openssl => "openssl",
        }
    }

    fn env_override(self) -> &'static str {
        match self {
            Tool::RedisServer => "GAMERELAY_TEST_REDIS_SERVER",
            Tool::RedisCli => "GAMERELAY_TEST_REDIS_CLI",
            Tool::Haproxy => "GAMERELAY_TEST_HAPROXY",
            Tool::Openssl => "GAMERELAY_TEST_OPENSSL",
        }
    }

    fn debian_package(self) -> &'static str {
        match self {
            Tool::RedisServer => "redis-server",
            Tool::RedisCli => "redis-tools",
            Tool::Haproxy => "haproxy",
            Tool::Openssl => "openssl",
        }
    }

    /// Where the program is, if installed.
    pub fn path(self) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(self.env_override()) {
            let p = PathBuf::from(p);
            return is_executable(&p).then_some(p);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
            .map(|dir| dir.join(self.name()))
            .find(|p| is_executable(p))
    }

    pub fn require(self) -> PathBuf {
        self.path().unwrap_or_else(|| {
            panic!(
                "{} not found (apt-get install {}, or set {})",
                self.name(),
                self.debian_package(),
                self.env_override()
            )
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True when every tool is installed. Otherwise prints why the test is skipped and returns
/// false (the test should return), or panics under `GAMERELAY_REQUIRE_CLUSTER_TOOLS=1`.
///
/// ```ignore
/// if !tools_available(&[Tool::RedisServer]) { return; }
/// ```
pub fn tools_available(tools: &[Tool]) -> bool {
    let missing: Vec<&str> =
        tools.iter().filter(|t| t.path().is_none()).map(|t| t.debian_package()).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "SKIPPED: this cluster test needs {} (apt-get install {}; scripts/test installs them)",
        missing.join(", "),
        missing.join(" ")
    );
    if std::env::var("GAMERELAY_REQUIRE_CLUSTER_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{msg} [GAMERELAY_REQUIRE_CLUSTER_TOOLS=1]");
    }
    eprintln!("{msg}");
    false
}

static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago and that this test process has not handed out
/// before (the OS picks it; a process that then fails to bind it is started again elsewhere).
pub fn free_port() -> u16 {
    let mut given = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
    panic!("no free loopback port");
}

static DIR_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory for one process's files: `target/tmp/cluster-tests/<label>-<pid>-<n>`.
pub fn fresh_dir(label: &str) -> PathBuf {
    let n = DIR_SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cluster-tests")
        .join(format!("{label}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a test directory");
    dir
}

fn keep_dirs() -> bool {
    std::env::var("GAMERELAY_TEST_KEEP_DIRS").is_ok_and(|v| v == "1")
}

/// Polls `check` every [`POLL`] until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// a child process with its output in a file

/// A child process whose stdout and stderr go to `<dir>/<name>.log`.
pub struct Proc {
    name: String,
    dir: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program args` with `env` added to the environment.
    pub fn spawn(
        name: &str,
        dir: PathBuf,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Proc {
        let mut p = Proc { name: name.to_owned(), dir, program, args, env, child: None, exit: None };
        p.launch();
        p
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// Starts the process (again) with the same program, arguments and environment.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "{} is still running; stop it first", self.name);
        let mut log =
            fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open a log file");
        let _ = writeln!(log, "==== starting {} {}", self.program.display(), self.args.join(" "));
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a log handle"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({}): {e}", self.name, self.program.display()));
        self.child = Some(child);
        self.exit = None;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id (of the running or last started process).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status if the process has exited (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
                self.child = None;
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none() && self.child.is_some()
    }

    /// Sends `sig` (a `libc::SIG*`) to the running process.
    pub fn signal(&mut self, sig: libc::c_int) {
        assert!(self.is_running(), "{} is not running", self.name);
        let pid = self.pid() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped yet.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
    }

    /// SIGKILL (continuing it first if stopped does not matter: SIGKILL ends stopped
    /// processes too) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last `n` lines of the process's output.
    pub fn log_tail(&self, n: usize) -> String {
        let Ok(f) = File::open(self.log_path()) else {
            return String::from("(no output file)");
        };
        let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Panics with the process's output; for a process that should be running but is not.
    fn died(&mut self, what: &str) -> ! {
        let status = self.try_exit();
        panic!(
            "{} exited ({status:?}) {what}; output ({}):\n{}",
            self.name,
            self.log_path().display(),
            self.log_tail(40)
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (output in {}) ----\n{}\n---- end of {} ----",
                self.name,
                self.log_path().display(),
                self.log_tail(60),
                self.name
            );
        } else if !keep_dirs() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP probes

/// `GET path` on `127.0.0.1:port`: the status code and body, or `None` if the request fails
/// (refused, timed out, not HTTP).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, &[], None).await
}

/// `method path` on `127.0.0.1:port` with extra headers and an optional JSON body: the
/// status code and body, or `None` if the request fails.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        Some((code, body))
    };
    tokio::time::timeout(HTTP_TIMEOUT, fut).await.ok().flatten()
}

/// Just the status code of `GET path`.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(code, _)| code)
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A reply of Redis (RESP2).
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text (simple or bulk strings), if it is one.
    pub fn as_str(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

fn read_resp(r: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad RESP line {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    let num = || rest.parse::<i64>().map_err(|_| bad());
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(num()?),
        "$" => match num()? {
            n if n < 0 => Resp::Bulk(None),
            n => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        },
        "*" => match num()? {
            n if n < 0 => Resp::Array(None),
            n => Resp::Array(Some((0..n).map(|_| read_resp(r)).collect::<io::Result<_>>()?)),
        },
        _ => return Err(bad()),
    })
}

/// Sends one command to Redis at `port` and reads its reply (blocking, bounded by a 2 s
/// timeout; Redis is local, so this is short).
pub fn redis_command(port: u16, args: &[&str]) -> io::Result<Resp> {
    let s = StdStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    (&s).write_all(&req)?;
    read_resp(&mut BufReader::new(&s))
}

/// A private `redis-server` on a free port (no persistence unless asked for).
pub struct Redis {
    proc: Proc,
    port: u16,
}

impl Redis {
    /// `redis-server --port <free> --bind 127.0.0.1 --save "" --appendonly no`, once it
    /// answers PING.
    pub async fn start() -> Redis {
        Redis::start_with(&[]).await
    }

    /// Like [`start`](Redis::start), with more `redis-server` flags (later flags win), e.g.
    /// `&["--appendonly", "yes", "--appendfsync", "always"]`. The data directory stays the
    /// same across [`restart`](Redis::restart), so an AOF is loaded again.
    pub async fn start_with(extra: &[&str]) -> Redis {
        let program = Tool::RedisServer.require();
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let dir = fresh_dir(&format!("redis-{port}"));
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                "",
                "--maxmemory-policy",
                "noeviction",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(["--dir".to_owned(), dir.display().to_string()]);
            args.extend(extra.iter().map(|s| s.to_string()));
            let proc = Proc::spawn("redis", dir, program.clone(), args, Vec::new());
            let mut redis = Redis { proc, port };
            match redis.wait_pong().await {
                Ok(()) => return redis,
                Err(e) => last_error = e, // most likely the port was taken meanwhile
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    async fn wait_pong(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping() {
                return Ok(());
            }
            if !self.proc.is_running() {
                return Err(format!("redis-server exited:\n{}", self.proc.log_tail(20)));
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {START_TIMEOUT:?}:\n{}", self.proc.log_tail(20)));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether Redis answers `PING` with `+PONG` now.
    pub fn ping(&self) -> bool {
        matches!(redis_command(self.port, &["PING"]), Ok(Resp::Simple(s)) if s == "PONG")
    }

    /// One command, e.g. `redis.cmd(&["DBSIZE"])`.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        redis_command(self.port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL: Redis is gone at once (without persistence, with everything in it).
    pub fn kill(&mut self) {
        self.proc.kill9();
    }

    /// SIGSTOP / SIGCONT: Redis hangs (connections stay open, nothing is answered).
    pub fn sigstop(&mut self) {
        self.proc.signal(libc::SIGSTOP);
    }

    pub fn sigcont(&mut self) {
        self.proc.signal(libc::SIGCONT);
    }

    /// Starts Redis again on the same port with the same flags and data directory (empty
    /// unless persistence was enabled), once it answers PING. Kills it first if running.
    pub async fn restart(&mut self) {
        self.proc.kill9();
        self.proc.launch();
        if let Err(e) = self.wait_pong().await {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    /// The process handle (output, exit status).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

// ---------------------------------------------------------------------------------------------
// gamerelay nodes

/// A `gamerelay` node process in cluster mode.
pub struct Node {
    proc: Proc,
    id: String,
    port: u16,
}

impl Node {
    /// Starts the node binary cargo built for these tests:
    /// `gamerelay --listen 127.0.0.1:<free> --node-id <node_id> --redis <redis_url>
    /// --cluster-secret <CLUSTER_SECRET> --log warn <extra_args>`, and returns once `/healthz`
    /// answers 200. `extra_args` may override `--log`.
    pub async fn start(redis_url: &str, node_id: &str, extra_args: &[&str]) -> Node {
        Node::start_with(Some(redis_url), node_id, extra_args).await
    }

    /// Starts a single node with the embedded backplane (no Redis), like [`Node::start`]
    /// otherwise.
    pub async fn start_embedded(node_id: &str, extra_args: &[&str]) -> Node {
        Node::start_with(None, node_id, extra_args).await
    }

    async fn start_with(redis_url: Option<&str>, node_id: &str, extra_args: &[&str]) -> Node {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let mut args: Vec<String> =
                vec!["--listen".into(), format!("127.0.0.1:{port}"), "--node-id".into(), node_id.into()];
            if let Some(url) = redis_url {
                args.extend(["--redis".into(), url.into(), "--cluster-secret".into(), CLUSTER_SECRET.into()]);
            }
            if !extra_args.iter().any(|a| *a == "--log" || a.starts_with("--log=")) {
                let filter = std::env::var("GAMERELAY_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into());
                args.extend(["--log".into(), filter]);
            }
            args.extend(extra_args.iter().map(|s| s.to_string()));
            let proc = Proc::spawn(
                node_id,
                fresh_dir(node_id),
                PathBuf::from(env!("CARGO_BIN_EXE_gamerelay")),
                args,
                Vec::new(),
            );
            let mut node = Node { proc, id: node_id.to_owned(), port };
            match node.wait_healthy().await {
                Ok(()) => return node,
                Err(log) if log.contains("Address already in use") => last_error = log,
                Err(log) => panic!("node {node_id} did not start: {log}"),
            }
        }
        panic!("node {node_id} did not start: {last_error}");
    }

    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http_status(self.port, "/healthz").await == Some(200) {
                return Ok(());
            }
            if !self.proc.is_running() {
                return Err(format!(
                    "exited ({:?}) before /healthz answered; output ({}):\n{}",
                    self.proc.try_exit(),
                    self.proc.log_path().display(),
                    self.proc.log_tail(40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "/healthz did not answer 200 within {START_TIMEOUT:?}; output:\n{}",
                    self.proc.log_tail(40)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The node id (`--node-id`), also its server name in HAProxy.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGKILL, reaped: the node is gone without a word (no drain, no lease release).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// SIGSTOP: the node freezes; its sockets stay open but nothing is answered.
    pub fn sigstop(&mut self) {
        self.proc.signal(libc::SIGSTOP);
    }

    /// SIGCONT: a stopped node goes on from where it was.
    pub fn sigcont(&mut self) {
        self.proc.signal(libc::SIGCONT);
    }

    /// SIGTERM: the node drains (`/readyz` 503, clients closed with 1012, rooms handed off)
    /// and exits; see [`wait`](Node::wait).
    pub fn sigterm(&mut self) {
        self.proc.signal(libc::SIGTERM);
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout).await
    }

    /// Starts the node again with the same id, port and flags (killing it first if it still
    /// runs), once `/healthz` answers.
    pub async fn restart(&mut self) {
        self.proc.kill9();
        self.proc.launch();
        if let Err(e) = self.wait_healthy().await {
            panic!("node {} did not restart: {e}", self.id);
        }
    }

    /// Status code of `/healthz` (`None`: no answer).
    pub async fn healthz(&self) -> Option<u16> {
        http_status(self.port, "/healthz").await
    }

    /// Status code of `/readyz` (`None`: no answer).
    pub async fn readyz(&self) -> Option<u16> {
        http_status(self.port, "/readyz").await
    }

    /// Waits until `/readyz` answers `code` (200 ready, 503 draining or cut off).
    pub async fn wait_readyz(&self, code: u16, timeout: Duration) {
        let what = format!("{} /readyz = {code}", self.id);
        wait_for(&what, timeout, || async move { (self.readyz().await == Some(code)).then_some(()) }).await;
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        match http_get(self.port, "/metrics").await {
            Some((200, body)) => body,
            other => panic!("{} /metrics: {other:?}", self.id),
        }
    }

    /// The value of one metric line (exact name including labels, e.g.
    /// `gamerelay_rooms_active`), summed if it appears several times; 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    }

    /// The process handle (output, exit status).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Everything the node wrote so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// Redis plus `n` nodes `node-1 ..= node-n`, each started with `extra_args`.
pub struct Cluster {
    // Field order = drop order: nodes before Redis.
    pub nodes: Vec<Node>,
    pub redis: Redis,
}

impl Cluster {
    pub async fn start(n: usize, extra_args: &[&str]) -> Cluster {
        let redis = Redis::start().await;
        let mut nodes = Vec::with_capacity(n);
        for i in 1..=n {
            nodes.push(Node::start(&redis.url(), &format!("node-{i}"), extra_args).await);
        }
        Cluster { nodes, redis }
    }

    /// Waits until every running node's `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        for node in &mut self.nodes {
            if node.is_running() {
                node.wait_readyz(200, timeout).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HAProxy

/// HAProxy running the repository's `haproxy/haproxy.cfg`, rendered by `haproxy/render` for a
/// set of nodes, on free ports, with a self-signed certificate for the wss frontend.
pub struct Haproxy {
    proc: Proc,
    ws_port: u16,
    wss_port: u16,
    ops_port: u16,
    config: PathBuf,
}

impl Haproxy {
    /// Whether HAProxy (and openssl, for the test certificate) are installed; prints a skip
    /// message otherwise (see [`tools_available`]).
    pub fn available() -> bool {
        tools_available(&[Tool::Haproxy, Tool::Openssl])
    }

    /// Starts HAProxy in front of `nodes` and waits until it reports every node UP in both
    /// backends. Call [`available`](Haproxy::available) first to skip when not installed.
    pub async fn start(nodes: &[&Node]) -> Haproxy {
        let haproxy = Tool::Haproxy.require();
        let openssl = Tool::Openssl.require();
        let dir = fresh_dir("haproxy");
        let (key, cert, pem) = (dir.join("key.pem"), dir.join("cert.pem"), dir.join("gamerelay.pem"));
        let out = Command::new(&openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        let mut bundle = fs::read(&cert).expect("read cert");
        bundle.extend(fs::read(&key).expect("read key"));
        fs::write(&pem, bundle).expect("write pem");

        let (ws_port, wss_port, ops_port) = (free_port(), free_port(), free_port());
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let servers: Vec<String> =
            nodes.iter().map(|n| format!("{}=127.0.0.1:{}", n.id(), n.port())).collect();
        let rendered = Command::new(repo.join("haproxy/render"))
            .args(&servers)
            .env("GR_WSS_BIND", "127.0.0.1")
            .env("GR_WSS_PORT", wss_port.to_string())
            .env("GR_WS_BIND", "127.0.0.1")
            .env("GR_WS_PORT", ws_port.to_string())
            .env("GR_OPS_BIND", "127.0.0.1")
            .env("GR_OPS_PORT", ops_port.to_string())
            .env("GR_TLS_PEM", &pem)
            .env("GR_ADMIN_SOCK", dir.join("admin.sock"))
            .env("GR_MAXCONN", "1024")
            .output()
            .expect("run haproxy/render");
        assert!(rendered.status.success(), "haproxy/render: {}", String::from_utf8_lossy(&rendered.stderr));
        let config = dir.join("haproxy.cfg");
        fs::write(&config, &rendered.stdout).expect("write haproxy.cfg");
        let check = Command::new(&haproxy).arg("-c").arg("-f").arg(&config).output().expect("haproxy -c");
        assert!(
            check.status.success(),
            "haproxy -c refused the rendered config:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );

        let args = vec!["-f".to_owned(), config.display().to_string()];
        let proc = Proc::spawn("haproxy", dir, haproxy, args, Vec::new());
        let mut hap = Haproxy { proc, ws_port, wss_port, ops_port, config };
        let deadline = Instant::now() + START_TIMEOUT;
        while http_status(ops_port, "/healthz").await != Some(200) {
            if !hap.proc.is_running() {
                hap.proc.died("before its operator frontend answered");
            }
            assert!(Instant::now() < deadline, "HAProxy did not answer within {START_TIMEOUT:?}");
            tokio::time::sleep(POLL).await;
        }
        for node in nodes {
            hap.wait_server(node.id(), "UP", START_TIMEOUT).await;
        }
        hap
    }

    /// Plain WebSocket URL of the public frontend (`ws://127.0.0.1:<port>/ws`).
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.ws_port)
    }

    /// TLS WebSocket URL of the public frontend (self-signed certificate for `localhost`).
    pub fn wss_url(&self) -> String {
        format!("wss://localhost:{}/ws", self.wss_port)
    }

    pub fn ws_port(&self) -> u16 {
        self.ws_port
    }

    pub fn ops_port(&self) -> u16 {
        self.ops_port
    }

    /// Operator frontend base URL (`/stats`, `/metrics`).
    pub fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
    }

    /// The rendered configuration file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// `(backend, server, status)` for every node, from the stats CSV (status: `UP`, `DOWN`,
    /// `UP 1/2`, `NOLB`, `MAINT`, ...).
    pub async fn server_states(&self) -> Vec<(String, String, String)> {
        let Some((200, csv)) = http_get(self.ops_port, "/stats;csv").await else {
            return Vec::new();
        };
        csv.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > 17 && f[0].starts_with("ws_") && f[1] != "BACKEND" && f[1] != "FRONTEND")
            .map(|f| (f[0].to_owned(), f[1].to_owned(), f[17].to_owned()))
            .collect()
    }

    /// Waits until `server` has `status` (e.g. `UP`, `DOWN`) in both backends.
    pub async fn wait_server(&self, server: &str, status: &str, timeout: Duration) {
        let what = format!("HAProxy to see {server} {status}");
        wait_for(&what, timeout, || async move {
            let states = self.server_states().await;
            let mine: Vec<_> = states.iter().filter(|(_, s, _)| s == server).collect();
            (mine.len() == 2 && mine.iter().all(|(_, _, st)| st == status)).then_some(())
        })
        .await;
    }

    /// The process handle (output, exit status).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Which node served the last `n` requests, from HAProxy's log (`backend/server` and the
    /// request line), oldest first.
    pub fn routed(&self, n: usize) -> Vec<(String, String)> {
        let log = self.proc.log();
        let mut out: Vec<(String, String)> = log
            .lines()
            .filter_map(|l| {
                let target = l.split_whitespace().find(|w| w.starts_with("ws_") && w.contains('/'))?;
                let req = l.split('"').nth(1).unwrap_or("").to_owned();
                Some((target.to_owned(), req))
            })
            .collect();
        out.drain(..out.len().saturating_sub(n));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// a TCP proxy the test controls

/// What [`TcpProxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Pass,
    /// Accept connections but forward nothing, in either direction, until the mode changes
    /// (bytes already read are held and delivered after `pass`, as TCP would after a healed
    /// partition). New connections are not connected upstream meanwhile.
    Blackhole,
    /// Close new connections at once with a reset (a host that refuses connections).
    Refuse,
}

/// An in-process TCP proxy between a node and Redis (or anything): the node is given
/// [`redis_url`](TcpProxy::redis_url) and the test cuts, stalls and heals the link.
pub struct TcpProxy {
    port: u16,
    target: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    resets: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target` (mode [`ProxyMode::Pass`]).
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (mode, _) = watch::channel(ProxyMode::Pass);
        let (resets, _) = watch::channel(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            mode.clone(),
            resets.clone(),
            open.clone(),
            accepted.clone(),
        ));
        TcpProxy { port, target, mode, resets, open, accepted, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<proxy port>`: give this to a node instead of Redis's own URL.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Forward traffic (and deliver what a blackhole held).
    pub fn pass(&self) {
        self.mode.send_replace(ProxyMode::Pass);
    }

    /// Stall every connection, open and new: nothing is forwarded, nothing is closed.
    pub fn blackhole(&self) {
        self.mode.send_replace(ProxyMode::Blackhole);
    }

    /// Reset new connections at once (existing ones are untouched; see
    /// [`reset_all`](TcpProxy::reset_all)).
    pub fn refuse(&self) {
        self.mode.send_replace(ProxyMode::Refuse);
    }

    /// Close every open connection, both sides, with a TCP reset. The mode stays as it is.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Connections open now (both sides).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks: aborting it drops them all.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    resets: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accept = listener.accept() => {
                let Ok((client, _)) = accept else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let mode_rx = mode.subscribe();
                let reset_rx = resets.subscribe();
                let open = open.clone();
                conns.spawn(async move {
                    open.fetch_add(1, Ordering::SeqCst);
                    proxy_conn(client, target, mode_rx, reset_rx).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Waits while the mode is `Blackhole`; false if the connection must be dropped instead.
async fn wait_not_blackholed(mode: &mut watch::Receiver<ProxyMode>) -> bool {
    loop {
        if *mode.borrow_and_update() != ProxyMode::Blackhole {
            return true;
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn proxy_conn(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    mut reset: watch::Receiver<u64>,
) {
    reset.mark_unchanged();
    // A new connection waits out a blackhole before it is connected upstream.
    let admitted = tokio::select! {
        ok = wait_not_blackholed(&mut mode) => ok && *mode.borrow() == ProxyMode::Pass,
        _ = reset.changed() => false,
    };
    let upstream = if admitted { TcpStream::connect(target).await.ok() } else { None };
    let Some(mut upstream) = upstream else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = upstream.set_nodelay(true);
    {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let forward = async {
            tokio::join!(pump(cr, uw, mode.clone()), pump(ur, cw, mode.clone()));
        };
        tokio::select! {
            _ = forward => return, // both directions ended normally (FIN forwarded)
            _ = reset.changed() => {}
        }
    }
    let _ = client.set_zero_linger();
    let _ = upstream.set_zero_linger();
}

async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut mode: watch::Receiver<ProxyMode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if !wait_not_blackholed(&mut mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
