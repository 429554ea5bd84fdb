//! `rapctl dev up` / `rapctl dev down`: a complete local platform on this
//! machine, left running in the background.
//!
//! `up` runs the flow of `scripts/controlplane-tour.sh` as daemons that
//! outlive rapctl: a private PostgreSQL (initdb + pg_ctl, unix socket only,
//! fsync on), `rap-controlplane init` + `serve` (TLS), storage voters that
//! enrol with `rap-configstore join` and `serve` in zones z1..zN, cluster
//! `dev` created and bootstrapped, and agents that `rap-node-agent join`
//! (approved here) and `run`. Everything lives in one directory; its
//! `dev.json` records the ports, what setup steps are done and every
//! process started, so `up` on an existing directory only restarts what is
//! not running, and `down` stops exactly those processes.
//!
//! Processes are checked by pid *and* program: a pid whose
//! `/proc/<pid>/exe` is not the program started there, or whose command
//! line does not name the platform's directory, counts as not running and
//! is never signalled.

use crate::output::Format;
use anyhow::{Context, Result, anyhow, bail};
use rap_core::logging::LogFormat;
use rap_pgtest::{BinarySearch, PgBinaries, RunAs, find_binaries, socket_url};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal as _, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The platform's directory unless `--dir` or `RAP_DEV_DIR` says otherwise.
pub const DIR_DEFAULT: &str = ".rap-dev";
/// The state file in the platform's directory.
pub const STATE_FILE: &str = "dev.json";
/// The version of [`STATE_FILE`]'s layout this rapctl reads and writes.
const STATE_VERSION: u32 = 1;
/// The platform-owner API token `rap-controlplane init` printed (0600).
const OWNER_TOKEN_FILE: &str = "owner.token";
/// The one cluster of the platform.
const CLUSTER_ID: &str = "dev";
/// Its human-readable name.
const CLUSTER_NAME: &str = "Local development platform";
/// The region label of every storage voter (the zones differ).
const REGION: &str = "r1";
/// The database the control plane uses (the maintenance database, as
/// `scripts/pg-dev.sh url` gives it).
const DATABASE: &str = "postgres";
/// Storage voters unless `--voters` says otherwise.
const VOTERS_DEFAULT: u32 = 3;
/// Fewest storage voters: one is bootstrapped with
/// `--allow-single-voter` (development: no failure tolerance).
const VOTERS_MIN: u32 = 1;
/// Most storage voters: what `rapctl cluster bootstrap` accepts.
const VOTERS_MAX: u32 = 7;
const _: () = assert!(VOTERS_MAX as usize <= rap_controlplane::clusters::BOOTSTRAP_VOTERS_MAX);
/// Agents unless `--agents` says otherwise.
const AGENTS_DEFAULT: u32 = 2;
/// Most agents: one machine, each agent a process.
const AGENTS_MAX: u32 = 16;
/// Capabilities every agent reports (as in the tour).
const AGENT_CAPABILITIES: [&str; 2] = ["can_run_rdp_worker", "can_route_mesh"];
/// The role the first agent gets, so the platform has a workload role.
const AGENT_ROLE: &str = "rdp-worker";
/// Lifetime of the join tokens made here (each is used at once).
const JOIN_TOKEN_TTL: &str = "10m";
/// How often an agent's `join` asks whether it was approved.
const AGENT_JOIN_POLL: &str = "200ms";

/// The control plane's program.
const CONTROLPLANE: &str = "rap-controlplane";
/// The storage node's program.
const CONFIGSTORE: &str = "rap-configstore";
/// The node agent's program.
const NODE_AGENT: &str = "rap-node-agent";
/// What builds every program `dev up` runs.
const BUILD_COMMAND: &str =
    "cargo build -p rapctl -p rap-controlplane-server -p rap-configstore -p rap-node-agent";
/// The cargo package of each program, for the error naming a missing one.
const PACKAGES: [(&str, &str); 3] = [
    (CONTROLPLANE, "rap-controlplane-server"),
    (CONFIGSTORE, "rap-configstore"),
    (NODE_AGENT, "rap-node-agent"),
];
/// Name of the PostgreSQL entry in [`State::processes`].
const POSTGRES: &str = "postgres";
/// Name of the control plane's entry in [`State::processes`].
const CONTROLPLANE_NAME: &str = "controlplane";

/// Pause between two checks of anything that is waited for.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long one TCP connection attempt to a local port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the control plane may take to answer `/readyz` with 200 (it
/// applies the migrations first).
const CONTROLPLANE_READY_WAIT: Duration = Duration::from_secs(60);
/// How long a storage node may take to open its gRPC port.
const PORT_OPEN_WAIT: Duration = Duration::from_secs(30);
/// How long one setup command may run: longer than rapctl's own request
/// timeout, so its answer (not ours) is reported.
const COMMAND_WAIT: Duration = Duration::from_secs(crate::client::REQUEST_TIMEOUT.as_secs() + 30);
/// How long an agent's `join` may take, approval included (also its
/// `--wait`).
const AGENT_JOIN_WAIT: Duration = Duration::from_secs(60);
/// How long a running agent may take to hold its verified node scope.
const AGENT_READY_WAIT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long a process may take to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Lines of a log shown when a step fails.
const LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a log to find those lines.
const LOG_TAIL_BYTES_MAX: u64 = 16 * 1024;
/// Largest stdout of a setup command that is kept.
const COMMAND_OUTPUT_BYTES_MAX: u64 = 1024 * 1024;
/// Largest `/readyz` answer read.
const HTTP_RESPONSE_BYTES_MAX: u64 = 4096;
/// Largest state file read.
const STATE_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// `rapctl dev`: a local platform for development.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    #[command(subcommand)]
    command: DevCommand,
}

/// The `dev` subcommands.
#[derive(clap::Subcommand, Debug)]
enum DevCommand {
    /// Start a complete local platform in the background, or restart what
    /// of it is not running: PostgreSQL, the control plane, storage voters
    /// and agents (all state in --dir).
    Up(UpArgs),
    /// Stop every process of the local platform (and delete it with
    /// --purge).
    Down(DownArgs),
}

/// `rapctl dev up`.
#[derive(clap::Args, Debug)]
struct UpArgs {
    /// The platform's directory: database, keys, node state, logs and
    /// dev.json.
    #[arg(long, env = "RAP_DEV_DIR", default_value = DIR_DEFAULT)]
    dir: PathBuf,
    /// Storage voters (3 to 7), in zones z1..zN [default: 3; a platform
    /// that exists keeps its own].
    #[arg(long, value_parser = clap::value_parser!(u32).range(i64::from(VOTERS_MIN)..=i64::from(VOTERS_MAX)))]
    voters: Option<u32>,
    /// Agents, node ids agent-1..agent-N [default: 2; a platform that exists
    /// keeps its own].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i64::from(AGENTS_MAX)))]
    agents: Option<u32>,
    /// Directory of rap-controlplane, rap-configstore and rap-node-agent
    /// [default: the directory of this rapctl].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The daemons' log format: text, or json (one object per line)
    /// [default: text; a platform that exists keeps its own].
    #[arg(long)]
    log_format: Option<LogFormat>,
}

/// How to call this rapctl: `rapctl` when that name on PATH is this
/// program, else its full path (e.g. cargo's target directory).
fn rapctl_command() -> String {
    let Ok(me) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "rapctl".to_owned();
    };
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("rapctl"))
            .find(|candidate| candidate.is_file())
    });
    match on_path.and_then(|p| std::fs::canonicalize(p).ok()) {
        Some(found) if found == me => "rapctl".to_owned(),
        _ => me.display().to_string(),
    }
}

/// `rapctl dev down`.
#[derive(clap::Args, Debug)]
struct DownArgs {
    /// The platform's directory.
    #[arg(long, env = "RAP_DEV_DIR", default_value = DIR_DEFAULT)]
    dir: PathBuf,
    /// Also delete the directory (database, keys, node state, logs).
    #[arg(long)]
    purge: bool,
}

/// Runs `rapctl dev ...`.
pub fn run(args: DevArgs, format: Format) -> Result<()> {
    match args.command {
        DevCommand::Up(args) => up(args, format),
        DevCommand::Down(args) => down(args, format),
    }
}

/// What `dev.json` holds: where everything is and what runs.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct State {
    /// [`STATE_VERSION`].
    version: u32,
    /// The platform's directory (absolute).
    dir: PathBuf,
    /// The cluster id.
    cluster: String,
    /// Where the programs were taken from last.
    bin_dir: PathBuf,
    /// Storage voters.
    voters: u32,
    /// Agents.
    agents: u32,
    /// Every port, chosen at the first start.
    ports: Ports,
    /// The control plane's admin API (`RAP_ENDPOINT`).
    endpoint: String,
    /// The host:port agents and storage nodes dial.
    public_endpoint: String,
    /// The web console.
    console_url: String,
    /// The platform CA (`RAP_CA`).
    ca: PathBuf,
    /// The platform-owner API token (`RAP_TOKEN_FILE`).
    token_file: PathBuf,
    /// The control plane's database.
    database_url: String,
    /// Setup steps done (never done twice).
    done: Done,
    /// Every process of the platform, started or not.
    processes: Vec<Process>,
    /// The daemons' log format (`--log-format` of the last `dev up` that
    /// gave one).
    #[serde(default)]
    log_format: LogFormat,
}

/// The ports of the platform, all on 127.0.0.1.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Ports {
    /// PostgreSQL: it listens on no TCP port; this names its socket file.
    postgres: u16,
    /// The control plane's gRPC (admin API, agents).
    controlplane: u16,
    /// The control plane's /metrics, /healthz, /readyz.
    controlplane_http: u16,
    /// The control plane's web console.
    console: u16,
    /// Each storage voter's ports, s1 first.
    storage: Vec<StoragePorts>,
}

/// One storage voter's ports.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct StoragePorts {
    /// Raft and AuthorityService.
    grpc: u16,
    /// /metrics, /healthz, /readyz.
    http: u16,
}

/// The setup steps done so far.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct Done {
    /// `rap-controlplane init` ran and the owner token is saved.
    initialised: bool,
    /// Cluster `dev` exists.
    cluster_created: bool,
    /// Storage nodes enrolled with `rap-configstore join`.
    storage_enrolled: Vec<String>,
    /// The authority group exists.
    bootstrapped: bool,
    /// Agents enrolled (approved).
    agents_enrolled: Vec<String>,
    /// The first agent has [`AGENT_ROLE`].
    role_assigned: bool,
}

/// One process of the platform.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Process {
    /// `postgres`, `controlplane`, `s1`.., `agent-1`..
    name: String,
    /// The program's file name, checked against `/proc/<pid>/exe`.
    program: String,
    /// The pid it was last started with (`None`: stopped).
    pid: Option<u32>,
    /// Its ports.
    ports: Vec<u16>,
    /// Its stdout and stderr.
    log: PathBuf,
}

/// What a process is, from its name.
enum Kind {
    /// The PostgreSQL server.
    Postgres,
    /// `rap-controlplane serve`.
    ControlPlane,
    /// `rap-configstore serve` of storage node `s<n>` (1-based).
    Storage(u32),
    /// `rap-node-agent run` of agent `agent-<n>` (1-based).
    Agent(u32),
}

impl Process {
    /// Its kind, from its name.
    fn kind(&self) -> Result<Kind> {
        let number = |text: &str| -> Result<u32> {
            text.parse()
                .with_context(|| format!("{STATE_FILE} names an unknown process {}", self.name))
        };
        match self.name.as_str() {
            POSTGRES => Ok(Kind::Postgres),
            CONTROLPLANE_NAME => Ok(Kind::ControlPlane),
            name => match (name.strip_prefix("agent-"), name.strip_prefix('s')) {
                (Some(n), _) => Ok(Kind::Agent(number(n)?)),
                (None, Some(n)) => Ok(Kind::Storage(number(n)?)),
                (None, None) => bail!("{STATE_FILE} names an unknown process {name}"),
            },
        }
    }

    /// Whether its pid runs its program for the platform in `dir`.
    fn is_up(&self, dir: &Path) -> bool {
        self.pid.is_some_and(|pid| owns(pid, &self.program, dir))
    }
}

/// The storage node id of voter `n`.
fn storage_id(n: u32) -> String {
    format!("s{n}")
}

/// The node id of agent `n`.
fn agent_id(n: u32) -> String {
    format!("agent-{n}")
}

impl State {
    /// A new platform in `dir` with free ports.
    fn new(dir: &Path, bin_dir: &Path, voters: u32, agents: u32) -> Result<State> {
        let mut ports = free_ports(4 + 2 * voters as usize)?.into_iter();
        let mut next = || ports.next().context("too few free ports");
        let postgres = next()?;
        let controlplane = next()?;
        let controlplane_http = next()?;
        let console = next()?;
        let storage = (0..voters)
            .map(|_| {
                Ok(StoragePorts {
                    grpc: next()?,
                    http: next()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let logs = dir.join("logs");
        let mut processes = vec![
            Process {
                name: POSTGRES.into(),
                program: POSTGRES.into(),
                pid: None,
                ports: vec![postgres],
                log: dir.join("pg").join("postgres.log"),
            },
            Process {
                name: CONTROLPLANE_NAME.into(),
                program: CONTROLPLANE.into(),
                pid: None,
                ports: vec![controlplane, controlplane_http, console],
                log: logs.join("controlplane.log"),
            },
        ];
        for (n, p) in (1..).zip(&storage) {
            processes.push(Process {
                name: storage_id(n),
                program: CONFIGSTORE.into(),
                pid: None,
                ports: vec![p.grpc, p.http],
                log: logs.join(format!("{}.log", storage_id(n))),
            });
        }
        for n in 1..=agents {
            processes.push(Process {
                name: agent_id(n),
                program: NODE_AGENT.into(),
                pid: None,
                ports: Vec::new(),
                log: logs.join(format!("{}.log", agent_id(n))),
            });
        }
        let pg_dir = dir.join("pg");
        Ok(State {
            version: STATE_VERSION,
            dir: dir.to_path_buf(),
            cluster: CLUSTER_ID.into(),
            bin_dir: bin_dir.to_path_buf(),
            voters,
            agents,
            endpoint: format!("https://127.0.0.1:{controlplane}"),
            public_endpoint: format!("127.0.0.1:{controlplane}"),
            console_url: format!("https://127.0.0.1:{console}/"),
            ca: dir.join("keys").join("platform").join("ca.pem"),
            token_file: dir.join(OWNER_TOKEN_FILE),
            database_url: socket_url(&pg_dir, postgres, DATABASE),
            ports: Ports {
                postgres,
                controlplane,
                controlplane_http,
                console,
                storage,
            },
            done: Done::default(),
            processes,
            log_format: LogFormat::default(),
        })
    }

    /// Reads `dir/dev.json`; `None` when there is none.
    fn load(dir: &Path) -> Result<Option<State>> {
        let path = dir.join(STATE_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let mut text = String::new();
        file.take(STATE_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .with_context(|| format!("read {}", path.display()))?;
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a dev platform's state", path.display()))?;
        if state.version != STATE_VERSION {
            bail!(
                "{} has layout version {}, this rapctl reads {STATE_VERSION}; \
                 `rapctl dev down --purge --dir {}` starts over",
                path.display(),
                state.version,
                dir.display()
            );
        }
        if state.dir != dir {
            bail!(
                "{} belongs to a platform in {} (the directory moved?); \
                 stop that one and start over with `rapctl dev down --purge`",
                path.display(),
                state.dir.display()
            );
        }
        Ok(Some(state))
    }

    /// Writes `dev.json` (through a temporary file, so it is never half
    /// written).
    fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let temporary = self.dir.join(format!("{STATE_FILE}.new"));
        let text = serde_json::to_string_pretty(self).context("encode the state")?;
        std::fs::write(&temporary, text + "\n")
            .with_context(|| format!("write {}", temporary.display()))?;
        std::fs::rename(&temporary, &path).with_context(|| format!("write {}", path.display()))
    }

    /// The PostgreSQL directory: data, log, socket.
    fn pg_dir(&self) -> PathBuf {
        self.dir.join("pg")
    }

    /// The control plane's keys.
    fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// Storage node `n`'s directory (data/ and tls/).
    fn storage_dir(&self, n: u32) -> PathBuf {
        self.dir.join("storage").join(storage_id(n))
    }

    /// Agent `n`'s state directory.
    fn agent_dir(&self, n: u32) -> PathBuf {
        self.dir.join("agents").join(agent_id(n))
    }

    /// The log of the setup commands (rapctl calls, init, joins).
    fn setup_log(&self) -> PathBuf {
        self.dir.join("logs").join("setup.log")
    }

    /// A program of the platform.
    fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Storage voter `n`'s ports.
    fn storage_ports(&self, n: u32) -> Result<StoragePorts> {
        n.checked_sub(1)
            .and_then(|i| self.ports.storage.get(i as usize))
            .copied()
            .with_context(|| format!("{STATE_FILE} has no ports for {}", storage_id(n)))
    }

    /// The process named `name`.
    fn process_mut(&mut self, name: &str) -> Result<&mut Process> {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("{STATE_FILE} lists no process {name}"))
    }

    /// A command running `program` in the platform's directory, with no
    /// inherited `RAP_*` settings (the caller's environment must not
    /// redirect the platform's processes).
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.as_bytes().starts_with(b"RAP_") {
                command.env_remove(key);
            }
        }
        // Logs are files: no terminal colours in them.
        command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .current_dir(&self.dir);
        command
    }

    /// `rapctl <args>` against the platform, as its owner.
    fn rapctl(&self, args: &[&str]) -> Result<Command> {
        let exe = std::env::current_exe().context("find the running rapctl")?;
        let mut command = self.command(&exe);
        command
            .env("RAP_ENDPOINT", &self.endpoint)
            .env("RAP_CA", &self.ca)
            .env("RAP_TOKEN_FILE", &self.token_file)
            .args(args);
        Ok(command)
    }

    /// The long-running command of a daemon process.
    fn daemon_command(&self, process: &Process) -> Result<Command> {
        let command = match process.kind()? {
            Kind::Postgres => bail!("PostgreSQL is started with pg_ctl"),
            Kind::ControlPlane => {
                let mut command = self.command(&self.program(CONTROLPLANE));
                command
                    .arg("serve")
                    .arg("--keys-dir")
                    .arg(self.keys_dir())
                    .args(["--database-url", &self.database_url])
                    .args([
                        "--listen",
                        &format!("127.0.0.1:{}", self.ports.controlplane),
                    ])
                    .args([
                        "--http-listen",
                        &format!("127.0.0.1:{}", self.ports.controlplane_http),
                    ])
                    .args(["--public-endpoint", &self.public_endpoint])
                    .args([
                        "--console-listen",
                        &format!("127.0.0.1:{}", self.ports.console),
                    ])
                    .args(["--log-format", &self.log_format.to_string()]);
                command
            }
            Kind::Storage(n) => {
                let ports = self.storage_ports(n)?;
                let mut command = self.command(&self.program(CONFIGSTORE));
                command
                    .args(["serve", "--node-id", &storage_id(n)])
                    .args(["--cluster-id", &self.cluster])
                    .args(["--listen", &format!("127.0.0.1:{}", ports.grpc)])
                    .args(["--http-listen", &format!("127.0.0.1:{}", ports.http)])
                    .arg("--data-dir")
                    .arg(self.storage_dir(n).join("data"))
                    .arg("--tls-dir")
                    .arg(self.storage_dir(n).join("tls"))
                    .args(["--region", REGION])
                    .args(["--zone", &format!("z{n}"), "--host", &format!("h{n}")])
                    .args(["--log-format", &self.log_format.to_string()]);
                command
            }
            Kind::Agent(n) => {
                let mut command = self.command(&self.program(NODE_AGENT));
                command
                    .args(["run", "--cluster", &self.cluster])
                    .arg("--state-dir")
                    .arg(self.agent_dir(n))
                    .args(["--log-format", &self.log_format.to_string()]);
                command
            }
        };
        Ok(command)
    }
}

/// `n` distinct ports nobody listens on now (all bound at once, so no two
/// are the same).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a free port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().context("read a free port")?.port()))
        .collect()
}

/// Whether `pid` runs `program` with an argument under `dir`: the pid was
/// not reused by another process since `dev up` started it. A zombie has
/// no `exe` and counts as gone.
fn owns(pid: u32, program: &str, dir: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(exe) = std::fs::read_link(proc_dir.join("exe")) else {
        return false;
    };
    // A rebuilt binary shows as "<path> (deleted)" in the running process.
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    if Path::new(exe).file_name() != Some(OsStr::new(program)) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    cmdline
        .split(|byte| *byte == 0)
        .any(|arg| Path::new(OsStr::from_bytes(arg)).starts_with(dir))
}

/// Sends `signal` (TERM, KILL) to `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -s {signal} {pid} failed ({status})");
    }
    Ok(())
}

/// Waits up to `wait` for `done` to hold; whether it did.
fn wait_for(wait: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// How a process was stopped.
enum Stopped {
    /// It was not running (no pid, gone, or another program).
    NotRunning,
    /// SIGTERM ended it.
    Terminated(Duration),
    /// It ignored SIGTERM for [`STOP_WAIT`]; SIGKILL ended it.
    Killed,
}

/// Stops `process` if it runs: SIGTERM, then SIGKILL after [`STOP_WAIT`].
fn stop_process(process: &Process, dir: &Path) -> Result<Stopped> {
    let Some(pid) = process.pid.filter(|_| process.is_up(dir)) else {
        return Ok(Stopped::NotRunning);
    };
    let started = Instant::now();
    send_signal(pid, "TERM")?;
    if wait_for(STOP_WAIT, || !process.is_up(dir)) {
        return Ok(Stopped::Terminated(started.elapsed()));
    }
    if process.is_up(dir) {
        send_signal(pid, "KILL")?;
    }
    if wait_for(KILL_WAIT, || !process.is_up(dir)) {
        return Ok(Stopped::Killed);
    }
    bail!(
        "{} (pid {pid}) is still running after SIGKILL",
        process.name
    )
}

/// Opens `path` for appending (creating it and its directory).
fn open_log(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// The last [`LOG_TAIL_LINES`] lines of `path`, or why there are none.
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES_MAX)))?;
        let mut bytes = Vec::new();
        file.take(LOG_TAIL_BYTES_MAX).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

/// The command line, for logs and errors (secrets never go in arguments).
fn describe(command: &Command) -> String {
    let program = Path::new(command.get_program());
    let mut words = vec![
        program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned(),
    ];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Waits up to `wait` for `child` to exit; kills it when it does not.
fn wait_bounded(child: &mut Child, wait: Duration, what: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("wait for {what}"))?
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {}s", wait.as_secs());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Whether a command's stdout may be written to the setup log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdout {
    /// Log it.
    Log,
    /// It holds a secret (a token): keep it out of the log.
    Secret,
}

/// Runs a setup command to completion (bounded by [`COMMAND_WAIT`]):
/// stderr to `log`, stdout returned (and logged unless secret).
fn run_setup(mut command: Command, log: &Path, stdout: Stdout) -> Result<String> {
    let what = describe(&command);
    let mut file = open_log(log)?;
    writeln!(file, "$ {what}").with_context(|| format!("write {}", log.display()))?;
    let stderr = file
        .try_clone()
        .with_context(|| format!("open {}", log.display()))?;
    command.stdout(Stdio::piped()).stderr(stderr);
    let mut child = command.spawn().with_context(|| format!("start `{what}`"))?;
    let mut pipe = child.stdout.take().context("no stdout pipe")?;
    let reader = std::thread::spawn(move || -> std::io::Result<String> {
        let mut text = Vec::new();
        (&mut pipe)
            .take(COMMAND_OUTPUT_BYTES_MAX)
            .read_to_end(&mut text)?;
        std::io::copy(&mut pipe, &mut std::io::sink())?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    });
    let status = wait_bounded(&mut child, COMMAND_WAIT, &format!("`{what}`"));
    let text = reader
        .join()
        .map_err(|_| anyhow!("reading the output of `{what}` failed"))?
        .with_context(|| format!("read the output of `{what}`"))?;
    let status = status?;
    let logged = match stdout {
        Stdout::Log => file.write_all(text.as_bytes()),
        Stdout::Secret => writeln!(file, "(stdout not logged: it holds a secret)"),
    };
    logged.with_context(|| format!("write {}", log.display()))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(text)
}

/// Starts a daemon detached from rapctl: its own process group, stdout and
/// stderr appended to `log`, so it outlives rapctl and a Ctrl-C of it.
fn spawn_daemon(mut command: Command, log: &Path) -> Result<Child> {
    let out = open_log(log)?;
    let err = out
        .try_clone()
        .with_context(|| format!("open {}", log.display()))?;
    command.stdout(out).stderr(err).process_group(0);
    command
        .spawn()
        .with_context(|| format!("start `{}`", describe(&command)))
}

/// Waits up to `wait` for `ready`, failing early when `child` exits.
fn wait_ready(
    child: &mut Child,
    wait: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("wait for {what}"))?
        {
            bail!("it exited ({status}) while waiting for {what}");
        }
        if Instant::now() >= deadline {
            bail!("no {what} within {}s", wait.as_secs());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        CONNECT_TIMEOUT,
    )
    .is_ok()
}

/// Whether 127.0.0.1:`port` cannot be bound: something holds it.
fn port_taken(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err()
}

/// Whether `GET /readyz` on 127.0.0.1:`port` answers 200.
fn ready(port: u16) -> bool {
    let check = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            CONNECT_TIMEOUT,
        )?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut answer = Vec::new();
        stream
            .take(HTTP_RESPONSE_BYTES_MAX)
            .read_to_end(&mut answer)?;
        let status_line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
        Ok(String::from_utf8_lossy(status_line)
            .split_whitespace()
            .nth(1)
            == Some("200"))
    };
    check().unwrap_or(false)
}

/// Finds the field `key` (a string) in a rapctl JSON answer.
fn json_field(json: &serde_json::Value, key: &str, what: &str) -> Result<String> {
    json.get(key)
        .and_then(serde_json::Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("{what} has no {key}"))
}

/// The private PostgreSQL server of the platform, run as `scripts/pg-dev.sh`
/// and the test harness run theirs (with fsync on: its data is kept).
struct Postgres {
    binaries: PgBinaries,
    run_as: RunAs,
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    /// Finds the server programs and whom to run them as.
    fn new(state: &State) -> Result<Postgres> {
        Ok(Postgres {
            binaries: find_binaries(&BinarySearch::from_env())?,
            run_as: RunAs::detect()?,
            dir: state.pg_dir(),
            port: state.ports.postgres,
        })
    }

    /// The data directory.
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// pg_ctl with `args`, as the server user.
    fn pg_ctl(&self, args: &[&OsStr]) -> Command {
        let mut command = self.run_as.command(&self.binaries.pg_ctl, &self.dir);
        command.arg("-D").arg(self.data()).args(args);
        command
    }

    /// Whether the server runs.
    fn is_up(&self) -> bool {
        self.data().join("PG_VERSION").exists()
            && self
                .pg_ctl(&[OsStr::new("status")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// The postmaster's pid.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Creates the data directory the first time, then starts the server
    /// (pg_ctl waits until it accepts connections, bounded by its `-t`).
    fn start(&self) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", self.dir.display()))?;
        self.run_as.hand_over(&self.dir)?;
        if matches!(self.run_as, RunAs::ServerUser { .. }) {
            let reachable = self
                .run_as
                .command(Path::new("test"), &self.dir)
                .arg("-w")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            if !reachable {
                bail!(
                    "the postgres user cannot reach {} (a parent directory is not searchable); \
                     choose another --dir",
                    self.dir.display()
                );
            }
        }
        if !self.data().join("PG_VERSION").exists() {
            let log = self.dir.join("initdb.log");
            let mut command = self.run_as.command(&self.binaries.initdb, &self.dir);
            command
                .arg("-D")
                .arg(self.data())
                .args(["-U", rap_pgtest::SUPERUSER, "-A", "trust"])
                .args(["-E", "UTF8", "--locale=C"]);
            run_setup(command, &log, Stdout::Log)
                .with_context(|| format!("initdb failed; see {}", log.display()))?;
        }
        let options = format!(
            "-c listen_addresses='' -k {} -p {} -c synchronous_commit=off",
            shell_quote(&self.dir.to_string_lossy()),
            self.port
        );
        let log = self.dir.join("postgres.log");
        let wait = rap_pgtest::limits::START_WAIT_SECONDS_MAX.to_string();
        let mut command = self.pg_ctl(&[
            OsStr::new("-l"),
            log.as_os_str(),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new(&wait),
            OsStr::new("-o"),
            OsStr::new(&options),
            OsStr::new("start"),
        ]);
        command.process_group(0);
        let output = command.output().context("run pg_ctl start")?;
        if !output.status.success() {
            bail!(
                "pg_ctl start failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Stops the server (fast shutdown); whether it was running.
    fn stop(&self) -> Result<bool> {
        if !self.is_up() {
            return Ok(false);
        }
        let wait = rap_pgtest::limits::STOP_WAIT_SECONDS_MAX.to_string();
        let output = self
            .pg_ctl(&[
                OsStr::new("-m"),
                OsStr::new("fast"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new(&wait),
                OsStr::new("stop"),
            ])
            .output()
            .context("run pg_ctl stop")?;
        if !output.status.success() {
            bail!(
                "pg_ctl stop failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(true)
    }
}

/// Quotes `text` as one word for `sh` (pg_ctl passes `-o` through a shell).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// One line per step: `✓ name  detail  (1.2s)`, or `✗` and why. At a
/// terminal the step shows while it runs and is rewritten when done.
struct Progress {
    /// Whether the lines go to a terminal.
    tty: bool,
    /// Whether they go to stderr (stdout carries JSON).
    to_stderr: bool,
}

impl Progress {
    /// Progress on stdout, or on stderr when stdout carries JSON.
    fn new(format: Format) -> Progress {
        let to_stderr = format == Format::Json;
        let tty = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        Progress { tty, to_stderr }
    }

    /// Writes `text` where the progress goes.
    fn write(&self, text: &str) {
        let _ = if self.to_stderr {
            std::io::stderr().lock().write_all(text.as_bytes())
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        };
    }

    /// A line of its own.
    fn line(&self, text: &str) {
        self.write(&format!("{text}\n"));
    }

    /// Runs `work` as step `name`; its `Ok` is the detail shown. On failure
    /// the error and the tail of `log` are shown.
    fn step(
        &self,
        name: &str,
        log: Option<&Path>,
        work: impl FnOnce() -> Result<String>,
    ) -> Result<()> {
        if self.tty {
            self.write(&format!("  \u{2026} {name}"));
        }
        let started = Instant::now();
        let result = work();
        let seconds = started.elapsed().as_secs_f64();
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        let (green, red, dim, reset) = if self.tty {
            ("\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        match result {
            Ok(detail) => {
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!("  {detail}")
                };
                self.line(&format!(
                    "{clear}  {green}\u{2713}{reset} {name}{detail}  {dim}({seconds:.1}s){reset}"
                ));
                Ok(())
            }
            Err(error) => {
                self.line(&format!(
                    "{clear}  {red}\u{2717}{reset} {name}  {dim}({seconds:.1}s){reset}"
                ));
                self.line(&format!("    {error:#}"));
                if let Some(log) = log {
                    self.line(&format!("    --- last lines of {}:", log.display()));
                    for line in log_tail(log).lines() {
                        self.line(&format!("    {line}"));
                    }
                }
                Err(error.context(format!("step failed: {name}")))
            }
        }
    }
}

/// What this run started, stopped again if a later step fails.
#[derive(Default)]
struct Started {
    /// PostgreSQL.
    postgres: bool,
    /// Daemons, by name, in start order.
    daemons: Vec<String>,
}

/// Where the platform lives when run as root and the default directory
/// is not reachable by the `postgres` user (e.g. a checkout under
/// `/root`).
pub const DIR_FALLBACK_AS_ROOT: &str = "/var/tmp/rap-dev";

/// The platform's directory: `dir`, absolute; but when `dir` is the
/// default, rapctl runs as root (PostgreSQL then runs as `postgres`) and
/// a parent directory is not searchable by others,
/// [`DIR_FALLBACK_AS_ROOT`], so `dev up` works from any checkout.
fn platform_dir(dir: &Path) -> Result<PathBuf> {
    let absolute = absolute_dir(dir)?;
    if dir != Path::new(DIR_DEFAULT) || !matches!(RunAs::detect()?, RunAs::ServerUser { .. }) {
        return Ok(absolute);
    }
    let searchable = absolute
        .ancestors()
        .skip(1)
        .filter_map(|a| std::fs::metadata(a).ok())
        .all(|m| m.permissions().mode() & 0o001 != 0);
    Ok(match searchable {
        true => absolute,
        false => PathBuf::from(DIR_FALLBACK_AS_ROOT),
    })
}

/// The directory of the platform, absolute (children run elsewhere).
fn absolute_dir(dir: &Path) -> Result<PathBuf> {
    std::path::absolute(dir).with_context(|| format!("resolve {}", dir.display()))
}

/// The directory of the programs: `--bin-dir`, else rapctl's own; each
/// program must be there.
fn bin_dir(flag: Option<&Path>) -> Result<PathBuf> {
    let dir = match flag {
        Some(dir) => absolute_dir(dir)?,
        None => std::env::current_exe()
            .context("find the running rapctl")?
            .parent()
            .context("the running rapctl has no directory")?
            .to_path_buf(),
    };
    for (program, package) in PACKAGES {
        let path = dir.join(program);
        let executable = std::fs::metadata(&path)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !executable {
            bail!(
                "{program} is missing in {} (package {package}); build the binaries with: \
                 {BUILD_COMMAND}{}",
                dir.display(),
                if flag.is_some() {
                    ""
                } else {
                    " (or point --bin-dir at them)"
                }
            );
        }
    }
    Ok(dir)
}

/// Creates the platform's directory: 0755 as root, so the postgres user can
/// reach the database directory inside. An existing directory must be
/// empty: `dev down --purge` deletes it whole.
fn create_dir(dir: &Path) -> Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        bail!(
            "{} holds files but no {STATE_FILE}: not a local platform; choose an empty or new \
             --dir",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    if matches!(RunAs::detect()?, RunAs::ServerUser { .. }) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 755 {}", dir.display()))?;
    }
    Ok(())
}

/// `rapctl dev up`.
fn up(args: UpArgs, format: Format) -> Result<()> {
    let started_at = Instant::now();
    let dir = platform_dir(&args.dir)?;
    let bin_dir = bin_dir(args.bin_dir.as_deref())?;
    let progress = Progress::new(format);
    let (mut state, resumed) = match State::load(&dir)? {
        Some(mut state) => {
            for (flag, value, have) in [
                ("--voters", args.voters, state.voters),
                ("--agents", args.agents, state.agents),
            ] {
                if let Some(value) = value.filter(|v| *v != have) {
                    bail!(
                        "the platform in {} has {have} for {flag}, not {value}; \
                         `rapctl dev down --purge --dir {}` starts over",
                        dir.display(),
                        dir.display()
                    );
                }
            }
            state.bin_dir = bin_dir;
            (state, true)
        }
        None => {
            create_dir(&dir)?;
            let state = State::new(
                &dir,
                &bin_dir,
                args.voters.unwrap_or(VOTERS_DEFAULT),
                args.agents.unwrap_or(AGENTS_DEFAULT),
            )?;
            (state, false)
        }
    };
    if let Some(format) = args.log_format {
        state.log_format = format;
    }
    state.save()?;
    progress.line(&format!(
        "{} the local platform in {} (programs from {})",
        if resumed { "Resuming" } else { "Starting" },
        dir.display(),
        state.bin_dir.display()
    ));
    let mut started = Started::default();
    if let Err(error) = bring_up(&mut state, &progress, &mut started) {
        let cleanup = stop_started(&mut state, &started);
        let _ = state.save();
        for line in cleanup {
            progress.line(&format!("    {line}"));
        }
        return Err(error.context(format!(
            "dev up failed; what this run started is stopped again (logs in {})",
            dir.join("logs").display()
        )));
    }
    state.save()?;
    match format {
        Format::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&state).context("encode the state")?
        ),
        Format::Table => print_summary(&state, started_at.elapsed(), resumed),
    }
    Ok(())
}

/// Stops what this run started (daemons newest first, then PostgreSQL);
/// lines saying what happened.
fn stop_started(state: &mut State, started: &Started) -> Vec<String> {
    let mut lines = Vec::new();
    let dir = state.dir.clone();
    for name in started.daemons.iter().rev() {
        let Ok(process) = state.process_mut(name) else {
            continue;
        };
        match stop_process(process, &dir) {
            Ok(_) => {
                lines.push(format!("stopped {name}"));
                process.pid = None;
            }
            Err(e) => lines.push(format!("could not stop {name}: {e:#}")),
        }
    }
    if started.postgres {
        match Postgres::new(state).and_then(|pg| pg.stop()) {
            Ok(_) => {
                lines.push("stopped PostgreSQL".to_owned());
                if let Ok(process) = state.process_mut(POSTGRES) {
                    process.pid = None;
                }
            }
            Err(e) => lines.push(format!("could not stop PostgreSQL: {e:#}")),
        }
    }
    lines
}

/// Every step of `dev up`, skipping what is done or running.
fn bring_up(state: &mut State, progress: &Progress, started: &mut Started) -> Result<()> {
    // PostgreSQL.
    let pg = Postgres::new(state)?;
    let pg_log = state.pg_dir().join("postgres.log");
    progress.step("PostgreSQL", Some(&pg_log), || {
        let was_up = pg.is_up();
        if !was_up {
            pg.start()?;
            started.postgres = true;
        }
        let pid = pg.pid();
        state.process_mut(POSTGRES)?.pid = pid;
        state.save()?;
        Ok(format!(
            "{}, pid {}, socket {}/.s.PGSQL.{}",
            if was_up { "already up" } else { "started" },
            pid.map_or("?".to_owned(), |p| p.to_string()),
            pg.dir.display(),
            pg.port
        ))
    })?;

    // rap-controlplane init: schema, platform CA, the first owner token.
    if !state.done.initialised {
        let log = state.setup_log();
        progress.step(
            "rap-controlplane init (schema, platform CA, owner token)",
            Some(&log),
            || {
                init(state)?;
                state.done.initialised = true;
                state.save()?;
                Ok(format!("token in {}", state.token_file.display()))
            },
        )?;
    }

    // rap-controlplane serve.
    let http_port = state.ports.controlplane_http;
    start_daemon(
        state,
        progress,
        started,
        CONTROLPLANE_NAME,
        Readiness {
            what: "/readyz answering 200",
            wait: CONTROLPLANE_READY_WAIT,
            check: &mut || ready(http_port),
        },
    )?;

    // Cluster `dev`.
    if !state.done.cluster_created {
        let log = state.setup_log();
        progress.step(&format!("cluster {CLUSTER_ID} created"), Some(&log), || {
            let command =
                state.rapctl(&["cluster", "create", CLUSTER_ID, "--name", CLUSTER_NAME])?;
            run_setup(command, &log, Stdout::Log)?;
            state.done.cluster_created = true;
            state.save()?;
            Ok(String::new())
        })?;
    }

    // Storage voters: enrol, then serve.
    for n in 1..=state.voters {
        let id = storage_id(n);
        if state.done.storage_enrolled.contains(&id) {
            continue;
        }
        let log = state.setup_log();
        progress.step(
            &format!("{id} enrolled (rap-configstore join, zone z{n})"),
            Some(&log),
            || {
                enrol_storage(state, n)?;
                state.done.storage_enrolled.push(id.clone());
                state.save()?;
                Ok(String::new())
            },
        )?;
    }
    for n in 1..=state.voters {
        let grpc = state.storage_ports(n)?.grpc;
        start_daemon(
            state,
            progress,
            started,
            &storage_id(n),
            Readiness {
                what: "an open gRPC port",
                wait: PORT_OPEN_WAIT,
                check: &mut || port_open(grpc),
            },
        )?;
    }

    // The authority group.
    if !state.done.bootstrapped {
        let log = state.setup_log();
        progress.step(
            &format!(
                "cluster {CLUSTER_ID} bootstrapped ({} voters)",
                state.voters
            ),
            Some(&log),
            || {
                let mut args = vec![
                    "cluster".to_owned(),
                    "bootstrap".to_owned(),
                    CLUSTER_ID.to_owned(),
                ];
                for n in 1..=state.voters {
                    let ports = state.storage_ports(n)?;
                    args.push("--voter".to_owned());
                    args.push(format!(
                        "{}=127.0.0.1:{},region={REGION},zone=z{n},host=h{n}",
                        storage_id(n),
                        ports.grpc
                    ));
                }
                if state.voters == 1 {
                    args.push("--allow-single-voter".to_owned());
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_setup(state.rapctl(&args)?, &log, Stdout::Log)?;
                state.done.bootstrapped = true;
                state.save()?;
                Ok(String::new())
            },
        )?;
    }

    // Agents: enrol (approved here), a role, then run.
    for n in 1..=state.agents {
        let id = agent_id(n);
        if state.done.agents_enrolled.contains(&id) {
            continue;
        }
        let log = state.dir.join("logs").join(format!("{id}-join.log"));
        progress.step(
            &format!("{id} enrolled (rap-node-agent join, approved)"),
            Some(&log),
            || {
                let detail = enrol_agent(state, n, &log)?;
                state.done.agents_enrolled.push(id.clone());
                state.save()?;
                Ok(detail)
            },
        )?;
    }
    if state.agents > 0 && !state.done.role_assigned {
        let log = state.setup_log();
        let node = agent_id(1);
        progress.step(&format!("role {AGENT_ROLE} on {node}"), Some(&log), || {
            let command = state.rapctl(&[
                "role",
                "assign",
                "--cluster",
                CLUSTER_ID,
                "--node",
                &node,
                "--role",
                AGENT_ROLE,
            ])?;
            run_setup(command, &log, Stdout::Log)?;
            state.done.role_assigned = true;
            state.save()?;
            Ok(String::new())
        })?;
    }
    for n in 1..=state.agents {
        let status = agent_status_command(state, n);
        let scope = format!("node/{}", agent_id(n));
        let since = rap_proto::time::UnixMillis::now().0;
        start_daemon(
            state,
            progress,
            started,
            &agent_id(n),
            Readiness {
                what: "a verified node scope",
                wait: AGENT_READY_WAIT,
                check: &mut || holds_scope(&status, &scope, since),
            },
        )?;
    }
    Ok(())
}

/// `rap-node-agent status -o json` of agent `n`, as argv.
fn agent_status_command(state: &State, n: u32) -> Vec<std::ffi::OsString> {
    vec![
        state.program(NODE_AGENT).into_os_string(),
        "status".into(),
        "--cluster".into(),
        state.cluster.clone().into(),
        "--state-dir".into(),
        state.agent_dir(n).into_os_string(),
        "-o".into(),
        "json".into(),
    ]
}

/// Whether the agent's status (argv `status`), written at or after
/// `since_ms` (by the `run` just started, not an earlier one), holds a
/// verified `scope`.
fn holds_scope(status: &[std::ffi::OsString], scope: &str, since_ms: i64) -> bool {
    let Some((program, args)) = status.split_first() else {
        return false;
    };
    let Ok(output) = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        return false;
    };
    output.status.success()
        && json
            .get("updated_at_unix_ms")
            .and_then(serde_json::Value::as_i64)
            .is_some_and(|at| at >= since_ms)
        && json.pointer("/scopes").and_then(|s| s.get(scope)).is_some()
}

/// When a daemon just started counts as up.
struct Readiness<'a> {
    /// What is waited for, for the error when it does not come.
    what: &'static str,
    /// How long it may take.
    wait: Duration,
    /// Whether it is there.
    check: &'a mut dyn FnMut() -> bool,
}

/// Starts daemon `name` unless it runs, and waits until it is ready. One
/// progress step.
fn start_daemon(
    state: &mut State,
    progress: &Progress,
    started: &mut Started,
    name: &str,
    readiness: Readiness<'_>,
) -> Result<()> {
    let process = state.process_mut(name)?.clone();
    let verb = match process.kind()? {
        Kind::Agent(_) => "run",
        _ => "serve",
    };
    let title = format!("{name} ({} {verb})", process.program);
    progress.step(&title, Some(&process.log), || {
        let ports = if process.ports.is_empty() {
            String::new()
        } else {
            let ports: Vec<String> = process.ports.iter().map(u16::to_string).collect();
            format!(", ports {}", ports.join(","))
        };
        if let Some(pid) = process.pid.filter(|_| process.is_up(&state.dir)) {
            return Ok(format!("already up, pid {pid}{ports}"));
        }
        if let Some(port) = process.ports.iter().find(|p| port_taken(**p)) {
            bail!(
                "port {port} of {name} is in use by another process (a copy of {name} that \
                 {STATE_FILE} lost track of? `ss -ltnp | grep {port}` shows which)"
            );
        }
        let command = state.daemon_command(&process)?;
        let mut child = spawn_daemon(command, &process.log)?;
        let pid = child.id();
        state.process_mut(name)?.pid = Some(pid);
        started.daemons.push(name.to_owned());
        state.save()?;
        wait_ready(&mut child, readiness.wait, readiness.what, readiness.check)?;
        Ok(format!("started, pid {pid}{ports}"))
    })
}

/// `rap-controlplane init`; the owner token it prints goes to
/// [`OWNER_TOKEN_FILE`] (0600), never to a log.
fn init(state: &State) -> Result<()> {
    let mut command = state.command(&state.program(CONTROLPLANE));
    command
        .arg("init")
        .arg("--keys-dir")
        .arg(state.keys_dir())
        .args(["--database-url", &state.database_url]);
    let output = run_setup(command, &state.setup_log(), Stdout::Secret)?;
    let token = output
        .split_whitespace()
        .find(|word| word.starts_with("rapat.") && word.split('.').count() == 3)
        .map(|word| word.trim_matches(|c: char| c == '\'' || c == '"'));
    match token {
        Some(token) => {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&state.token_file)
                .with_context(|| format!("write {}", state.token_file.display()))?;
            std::fs::set_permissions(&state.token_file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 600 {}", state.token_file.display()))?;
            writeln!(file, "{token}")
                .with_context(|| format!("write {}", state.token_file.display()))?;
            Ok(())
        }
        // An owner exists already (an earlier run saved the token and
        // stopped before recording it).
        None if state.token_file.exists() => Ok(()),
        None => bail!(
            "rap-controlplane init printed no owner token and {} does not exist \
             (`rap-controlplane owner-token` makes a new one)",
            state.token_file.display()
        ),
    }
}

/// A join token (`--storage-node` for a storage node): its raw token and
/// the cluster CA fingerprint.
fn join_token(state: &State, storage_node: Option<&str>) -> Result<(String, String)> {
    let mut args = vec![
        "token",
        "create",
        "--cluster",
        CLUSTER_ID,
        "--ttl",
        JOIN_TOKEN_TTL,
        "--max-uses",
        "1",
        "-o",
        "json",
    ];
    if let Some(node) = storage_node {
        args.extend(["--storage-node", node]);
    }
    let output = run_setup(state.rapctl(&args)?, &state.setup_log(), Stdout::Secret)?;
    let json: serde_json::Value =
        serde_json::from_str(&output).context("`rapctl token create` printed no JSON")?;
    Ok((
        json_field(&json, "raw_token", "the join token")?,
        json_field(&json, "ca_fingerprint", "the join token")?,
    ))
}

/// Storage node `n` enrols: a single-use storage token, then
/// `rap-configstore join` (its key made in its TLS directory).
fn enrol_storage(state: &State, n: u32) -> Result<()> {
    let id = storage_id(n);
    let (token, fingerprint) = join_token(state, Some(&id))?;
    let ports = state.storage_ports(n)?;
    let mut command = state.command(&state.program(CONFIGSTORE));
    command
        .args(["join", "--control-plane", &state.public_endpoint])
        .args(["--cluster", CLUSTER_ID, "--node-id", &id])
        .args(["--ca-fingerprint", &fingerprint])
        .arg("--tls-dir")
        .arg(state.storage_dir(n).join("tls"))
        .args(["--advertise", &format!("127.0.0.1:{}", ports.grpc)])
        .env("RAP_JOIN_TOKEN", token);
    run_setup(command, &state.setup_log(), Stdout::Log)?;
    Ok(())
}

/// Agent `n` enrols: a join token, `rap-node-agent join` in the background,
/// its request approved here as `agent-<n>`, then the join finishes.
fn enrol_agent(state: &State, n: u32, log: &Path) -> Result<String> {
    let id = agent_id(n);
    let hostname = format!("dev-{id}");
    let (token, fingerprint) = join_token(state, None)?;
    let mut command = state.command(&state.program(NODE_AGENT));
    command
        .args(["join", "--server", &state.public_endpoint])
        .args(["--cluster", CLUSTER_ID, "--ca-fingerprint", &fingerprint])
        .arg("--state-dir")
        .arg(state.agent_dir(n))
        .args(["--hostname", &hostname])
        .args(["--poll-interval", AGENT_JOIN_POLL])
        .args(["--wait", &format!("{}s", AGENT_JOIN_WAIT.as_secs())])
        .env("RAP_JOIN_TOKEN", token);
    for capability in AGENT_CAPABILITIES {
        command.args(["--capability", capability]);
    }
    let mut file = open_log(log)?;
    writeln!(file, "$ {}", describe(&command))
        .with_context(|| format!("write {}", log.display()))?;
    let mut child = spawn_daemon(command, log)?;
    let result = approve_join(state, &mut child, &hostname, &id);
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Approves the pending request of `hostname` as node `id`, until `child`
/// (its `join`) exits; bounded by [`AGENT_JOIN_WAIT`].
fn approve_join(state: &State, child: &mut Child, hostname: &str, id: &str) -> Result<String> {
    let deadline = Instant::now() + AGENT_JOIN_WAIT;
    let mut approved = None;
    loop {
        if let Some(status) = child.try_wait().context("wait for rap-node-agent join")? {
            if !status.success() {
                bail!("rap-node-agent join failed ({status})");
            }
            return Ok(match approved {
                Some(request) => format!("request {request} approved as {id}"),
                None => "enrolled before".to_owned(),
            });
        }
        if Instant::now() >= deadline {
            bail!(
                "rap-node-agent join did not finish within {}s",
                AGENT_JOIN_WAIT.as_secs()
            );
        }
        if approved.is_none() {
            let command = state.rapctl(&[
                "join-request",
                "list",
                "--cluster",
                CLUSTER_ID,
                "-o",
                "json",
            ])?;
            let output = run_setup(command, &state.setup_log(), Stdout::Log)?;
            let json: serde_json::Value = serde_json::from_str(&output)
                .context("`rapctl join-request list` printed no JSON")?;
            let request = json
                .get("requests")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| {
                    r.pointer("/facts/hostname")
                        .and_then(serde_json::Value::as_str)
                        == Some(hostname)
                })
                .map(|r| json_field(r, "join_request_id", "a join request"))
                .transpose()?;
            if let Some(request) = request {
                let command =
                    state.rapctl(&["join-request", "approve", &request, "--node-id", id])?;
                run_setup(command, &state.setup_log(), Stdout::Log)?;
                approved = Some(request);
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The final screen: what runs where, the console, how to use rapctl.
fn print_summary(state: &State, elapsed: Duration, resumed: bool) {
    let dir = state.dir.display();
    crate::outln!(
        "\nThe local platform is {} ({:.1}s): cluster {}, {} storage voters, {} agents.\n",
        if resumed { "up again" } else { "up" },
        elapsed.as_secs_f64(),
        state.cluster,
        state.voters,
        state.agents
    );
    let mut table = crate::table::Table::new(&["PROCESS", "PID", "PORTS", "LOG"]);
    for p in &state.processes {
        let ports = match p.name.as_str() {
            POSTGRES => format!("unix socket .s.PGSQL.{}", state.ports.postgres),
            CONTROLPLANE_NAME => format!(
                "{} gRPC, {} HTTP, {} console",
                state.ports.controlplane, state.ports.controlplane_http, state.ports.console
            ),
            _ if p.ports.len() == 2 => format!("{} gRPC, {} HTTP", p.ports[0], p.ports[1]),
            _ => "-".to_owned(),
        };
        let log = p
            .log
            .strip_prefix(&state.dir)
            .unwrap_or(&p.log)
            .display()
            .to_string();
        table.row(vec![
            p.name.clone(),
            p.pid.map_or("-".to_owned(), |pid| pid.to_string()),
            ports,
            log,
        ]);
    }
    table.print();
    crate::outln!("(logs are under {dir})\n");
    crate::outln!("Web console: {}", state.console_url);
    if !port_open(state.ports.console) {
        let log = state
            .processes
            .iter()
            .find(|p| p.name == CONTROLPLANE_NAME)
            .map(|p| p.log.display().to_string())
            .unwrap_or_default();
        crate::outln!("  (nothing listens there: see {log} for why)");
    }
    crate::outln!(
        "  sign in: paste the platform-owner token from {} into the sign-in page",
        state.token_file.display()
    );
    let console_cert = state
        .ca
        .parent()
        .map(|dir| dir.join(rap_controlplane::keys::console::CONSOLE_CERT_FILE));
    let fingerprint = console_cert
        .as_deref()
        .and_then(|path| rap_controlplane::keys::console::file_fingerprint(path).ok());
    if let (Some(path), Some(fingerprint)) = (&console_cert, &fingerprint) {
        crate::outln!(
            "  its certificate is self-signed ({}): the browser warns once; check that it shows \
             SHA-256 {fingerprint}\n",
            path.display()
        );
    } else {
        crate::outln!();
    }
    crate::outln!("Use rapctl against it:");
    crate::outln!("  export RAP_ENDPOINT={}", state.endpoint);
    crate::outln!("  export RAP_CA={}", state.ca.display());
    crate::outln!("  export RAP_TOKEN_FILE={}\n", state.token_file.display());
    crate::outln!("Then try:");
    let cluster = &state.cluster;
    let rapctl = rapctl_command();
    for command in [
        "overview".to_owned(),
        format!("node list --cluster {cluster}"),
        format!("authority status {cluster}"),
        format!("join-request list --cluster {cluster} --status all"),
        format!("audit list --cluster {cluster} --limit 20"),
        format!("role list --cluster {cluster}"),
    ] {
        crate::outln!("  {rapctl} {command}");
    }
    crate::outln!(
        "\nStop it: {rapctl} dev down --dir {dir}   (--purge also deletes the directory)"
    );
}

/// `rapctl dev down`.
fn down(args: DownArgs, format: Format) -> Result<()> {
    let dir = platform_dir(&args.dir)?;
    let Some(mut state) = State::load(&dir)? else {
        bail!(
            "no local platform in {} (no {STATE_FILE}); nothing stopped",
            dir.display()
        );
    };
    let mut report = Vec::new();
    let mut failed = Vec::new();
    // Agents first, then storage, then the control plane; PostgreSQL last.
    let daemons: Vec<usize> = (0..state.processes.len())
        .rev()
        .filter(|i| state.processes[*i].name != POSTGRES)
        .collect();
    for i in daemons {
        let process = &state.processes[i];
        let pid = process.pid;
        let line = match stop_process(process, &dir) {
            Ok(Stopped::NotRunning) => "not running".to_owned(),
            Ok(Stopped::Terminated(took)) => {
                format!("stopped (SIGTERM, {:.1}s)", took.as_secs_f64())
            }
            Ok(Stopped::Killed) => {
                format!("killed (SIGKILL after {}s of SIGTERM)", STOP_WAIT.as_secs())
            }
            Err(e) => {
                failed.push(process.name.clone());
                format!("NOT stopped: {e:#}")
            }
        };
        if !failed.contains(&process.name) {
            state.processes[i].pid = None;
        }
        report.push((state.processes[i].name.clone(), pid, line));
    }
    let pid = state
        .processes
        .iter()
        .find(|p| p.name == POSTGRES)
        .and_then(|p| p.pid);
    let line = match Postgres::new(&state).and_then(|pg| pg.stop()) {
        Ok(true) => "stopped (pg_ctl stop -m fast)".to_owned(),
        Ok(false) => "not running".to_owned(),
        Err(e) => {
            failed.push(POSTGRES.to_owned());
            format!("NOT stopped: {e:#}")
        }
    };
    if !failed.iter().any(|f| f == POSTGRES)
        && let Ok(process) = state.process_mut(POSTGRES)
    {
        process.pid = None;
    }
    report.push((POSTGRES.to_owned(), pid, line));
    state.save()?;
    let purged = args.purge && failed.is_empty();
    if purged {
        std::fs::remove_dir_all(&dir).with_context(|| format!("delete {}", dir.display()))?;
    }
    match format {
        Format::Json => {
            let rows: Vec<_> = report
                .iter()
                .map(|(name, pid, result)| serde_json::json!({"name": name, "pid": pid, "result": result}))
                .collect();
            crate::outln!(
                "{:#}",
                serde_json::json!({"dir": dir, "processes": rows, "purged": purged})
            );
        }
        Format::Table => {
            let mut table = crate::table::Table::new(&["PROCESS", "PID", "RESULT"]);
            for (name, pid, result) in &report {
                table.row(vec![
                    name.clone(),
                    pid.map_or("-".to_owned(), |p| p.to_string()),
                    result.clone(),
                ]);
            }
            table.print();
            if purged {
                crate::outln!("deleted {}", dir.display());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "could not stop {}{}",
            failed.join(", "),
            if args.purge {
                "; the directory is kept"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_state_has_distinct_ports_and_every_process() {
        // Goal: a new platform's ports never collide and dev.json lists
        // every process with the program it checks. Method: build the state
        // for 3 voters and 2 agents and look at it.
        let dir = Path::new("/tmp/rap-dev-test");
        let state = State::new(dir, Path::new("/bin"), 3, 2).unwrap();
        let mut ports: Vec<u16> = state
            .processes
            .iter()
            .flat_map(|p| p.ports.clone())
            .collect();
        let count = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), count);
        assert_eq!(count, 1 + 3 + 3 * 2);
        let names: Vec<&str> = state.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "postgres",
                "controlplane",
                "s1",
                "s2",
                "s3",
                "agent-1",
                "agent-2"
            ]
        );
        assert!(matches!(state.processes[4].kind(), Ok(Kind::Storage(3))));
        assert!(matches!(state.processes[6].kind(), Ok(Kind::Agent(2))));
        assert!(state.database_url.contains("host=/tmp/rap-dev-test/pg"));
    }

    #[test]
    fn a_foreign_or_gone_pid_is_not_ours() {
        // Goal: `down` never signals a process it did not start. Method:
        // this test process runs another program than rap-node-agent, and
        // a pid past the kernel's maximum does not exist.
        let me = std::process::id();
        assert!(!owns(me, NODE_AGENT, Path::new("/")));
        assert!(!owns(u32::MAX, NODE_AGENT, Path::new("/")));
    }
}
