//! The command line (DESIGN §4): every subcommand, option and exit status of `ferry`, as
//! clap parses them. Parsing only: `cli` dispatches, `client` runs the client commands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ferry_core::{ClusterName, MachineName, ServerName};

/// Exit status when the command could not do what was asked.
pub const EXIT_FAILED: i32 = 1;
/// Exit status for a command-line or domain-file error.
pub const EXIT_USAGE: i32 = 2;

/// The help heading of the options every command takes.
const GLOBAL: &str = "Global options (all optional)";

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Keeps pinned servers alive: automatic whole server migration with leases, fencing and floating IPs"
)]
pub struct Cli {
    /// The Administration Server's URL, for client commands.
    // Global options go under their own heading, so a subcommand's help (`ferry migrate
    // --help`) does not list them among its own, next to the ones it requires.
    #[arg(
        long,
        global = true,
        env = "FERRY_ADMIN",
        default_value = "http://127.0.0.1:7001",
        value_name = "URL",
        help_heading = GLOBAL
    )]
    pub admin: String,
    /// The domain CA certificate, to reach the Administration Server over TLS from another
    /// host (the admin writes it to DOMAIN_DIR/.ferry/ca.pem and DATA/pki/ca.pem). Not
    /// needed on the admin's own host, where client commands may use plain HTTP.
    #[arg(long, global = true, env = "FERRY_CA", value_name = "FILE", help_heading = GLOBAL)]
    pub ca: Option<PathBuf>,
    /// The file holding the token a command needs. Client commands: the operator token
    /// [default: $FERRY_TOKEN, else the file $FERRY_TOKEN_FILE, else the client file the admin
    /// left for this user, $FERRY_CONFIG_DIR/admins/HOST_PORT/token, $FERRY_CONFIG_DIR
    /// defaulting to ~/.config/ferry]. `ferry enroll`: the one-time enrollment token, `-` for
    /// standard input [default: $FERRY_ENROLL_TOKEN].
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// `ferry events` also prints one JSON object per line, for a stream.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum EventsOutput {
    Text,
    Json,
    Jsonl,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the Administration Server.
    Admin {
        #[arg(long)]
        domain: PathBuf,
        /// Where the configuration versions, the event log and the operator tokens
        /// (`tokens.json`, the initial `admin.token`) live [default: DOMAIN_DIR/data/admin].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Listen here instead of the domain file's `[admin] listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the Node Manager of one machine.
    Nodemanager {
        #[arg(long)]
        machine: String,
        #[arg(long, conflicts_with = "admin_url")]
        domain: Option<PathBuf>,
        /// Fetch the domain from this Administration Server instead of a file.
        #[arg(long = "admin-url")]
        admin_url: Option<String>,
        /// [default: DOMAIN_DIR/data/nm-MACHINE]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The domain secret, with which a Node Manager on the admin's host enrolls its
        /// machine at its first start [default: $FERRY_SECRET, else DOMAIN_DIR/.ferry/secret,
        /// which the Administration Server creates]. Not needed once enrolled.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// A file holding a one-time enrollment token (`ferry machine enroll-token`), for a
        /// first start on another host [default: $FERRY_ENROLL_TOKEN].
        #[arg(long)]
        enroll_token_file: Option<PathBuf>,
    },
    /// Run a witness: a voter of consensus leasing that hosts no servers (a `[[witnesses]]`
    /// entry of the domain), so that a domain of two machines keeps its majority when either
    /// dies. Run it on a third host, for example the admin's. It enrolls like a Node Manager
    /// (`ferry machine enroll-token NAME` makes its token).
    Witness {
        #[arg(long)]
        name: String,
        #[arg(long, conflicts_with = "admin_url")]
        domain: Option<PathBuf>,
        /// Fetch the domain from this Administration Server instead of a file.
        #[arg(long = "admin-url")]
        admin_url: Option<String>,
        /// [default: DOMAIN_DIR/data/witness-NAME]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The domain secret, to enroll at the first start on the admin's host [default:
        /// $FERRY_SECRET, else DOMAIN_DIR/.ferry/secret]. Not needed once enrolled.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// A file holding a one-time enrollment token, for a first start on another host
        /// [default: $FERRY_ENROLL_TOKEN].
        #[arg(long)]
        enroll_token_file: Option<PathBuf>,
    },
    /// Enroll a machine (the `nmEnroll` equivalent): its Node Manager makes its keys here and
    /// gets certificates from the Administration Server for a one-time token that
    /// `ferry machine enroll-token MACHINE` printed. Run it on the machine.
    Enroll {
        #[arg(long)]
        machine: String,
        /// The Node Manager's data directory (where `ferry nodemanager --data-dir` will look).
        /// The token comes from `--token-file FILE` (`-` for standard input) or
        /// $FERRY_ENROLL_TOKEN.
        #[arg(long)]
        data_dir: PathBuf,
        /// Enroll again even if certificates are there (after `ferry machine revoke`).
        #[arg(long)]
        force: bool,
        /// Rotation: new keys and certificates for a machine that is enrolled, authenticated
        /// by its current certificate (no token); restart its Node Manager afterwards.
        #[arg(long, conflicts_with = "force")]
        rotate: bool,
    },
    /// Machines' certificates: one-time enrollment tokens, revocation.
    Machine {
        #[command(subcommand)]
        action: MachineAction,
    },
    /// Run a migratable server (started by a Node Manager, not by hand).
    Server { name: String },
    /// Check a domain file and print every problem with its line.
    Validate { file: PathBuf },
    /// Start every server of a cluster on its home machine (Figure 7-1).
    StartCluster {
        cluster: ClusterName,
        /// Wait until every server holds its lease.
        #[arg(long)]
        wait: bool,
    },
    /// Start a server on its home machine.
    Start {
        server: ServerName,
        #[arg(long)]
        wait: bool,
    },
    /// Stop a server through its Node Manager (graceful, then forced after its shutdown_timeout).
    Stop {
        server: ServerName,
        /// Kill at once instead of asking it to shut down.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Move a server to another machine (manual migration and failback, Figure 7-3).
    Migrate {
        /// The server to move.
        server: ServerName,
        /// The machine to move it to: its home machine or one of its candidates.
        #[arg(long, value_name = "MACHINE")]
        to: MachineName,
        /// Show the migration's steps as they happen and wait for the end.
        #[arg(long)]
        wait: bool,
    },
    /// Show the servers: state, machine, epoch, lease left, master.
    Status {
        #[arg(long)]
        watch: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
    },
    /// Show the lease table.
    Leases {
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
    },
    /// Show the event log: migrations, fencing, elections. Every event the admin holds by
    /// default, oldest first.
    Events {
        /// Keep showing events as they come (with text or jsonl output).
        #[arg(long)]
        follow: bool,
        /// Only the events after this one (by id).
        #[arg(long, value_name = "ID", default_value_t = 0)]
        since: u64,
        /// At most this many events; what was left out, and how to get it, goes to stderr.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// `json`: one JSON array; `jsonl`: one JSON object per line.
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: EventsOutput,
    },
    /// Manage operator tokens: create (shown once), list, revoke (the Admin role).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Create or re-create the lease table (the leasing.ddl equivalent).
    Leasing {
        #[command(subcommand)]
        action: LeasingAction,
    },
    /// Play the seed's Figures 7-1, 7-2 and 7-3 live with real processes on this host.
    Demo {
        /// Exit when the demo is done instead of keeping the cluster up.
        #[arg(long)]
        exit_after: bool,
        /// Where to write the domain file and data [default: a new temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Lease table to use [default: sqlite in DIR].
        #[arg(long, conflicts_with = "hosts")]
        data_source: Option<String>,
        /// Play it on lab hosts (root only): machines as network namespaces, PostgreSQL in
        /// the switch, a real floating IP that moves, and a client that watches it.
        #[arg(long)]
        hosts: bool,
        /// The leasing basis: a database (SQLite in DIR, or --data-source), or consensus
        /// among the machines' Node Managers.
        #[arg(long, value_enum, default_value = "database", conflicts_with = "data_source")]
        leasing: DemoLeasing,
    },
    /// Show the machines: their Node Managers, whether they answer, what they run.
    Machines {
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
    },
    /// A client of a demo service: asks it who it is every few milliseconds and logs the
    /// answers (what a user of the floating IP sees).
    #[command(hide = true)]
    DemoClient {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long)]
        log: PathBuf,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
    },
    /// A small HTTP service that answers with its server, machine and fencing token (the
    /// demo's hosted service).
    #[command(hide = true)]
    DemoService {
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Append a line every 10 ms while running, for the no-two-instances check.
        #[arg(long)]
        journal: Option<PathBuf>,
    },
}

/// A token's role, as WebLogic names them.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RoleArg {
    /// Reads: status, leases, events, the configuration, metrics.
    Monitor,
    /// Also starts, stops and migrates.
    Operator,
    /// Also changes the configuration and the tokens.
    Admin,
}

impl From<RoleArg> for ferry_api::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Monitor => ferry_api::Role::Monitor,
            RoleArg::Operator => ferry_api::Role::Operator,
            RoleArg::Admin => ferry_api::Role::Admin,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Create a token and print it on stdout, once: `T=$(ferry token create ...)`.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Lifetime, e.g. 30d or 12h [default: until revoked].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List the tokens: names, roles, state, creation and expiry (never the tokens).
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke a token by name; it stops working at once.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum MachineAction {
    /// Print a one-time token (valid one hour) with which `ferry enroll --machine MACHINE`
    /// gets the machine its certificates.
    EnrollToken { machine: MachineName },
    /// Revoke every certificate of a machine: its Node Manager, and the servers it started,
    /// are refused by every process of the domain until the machine enrolls again.
    Revoke { machine: MachineName },
}

#[derive(Subcommand, Debug)]
pub enum LeasingAction {
    /// Create the lease table if it does not exist.
    Init {
        #[arg(long)]
        data_source: String,
    },
    /// Drop and re-create the lease table (test environments only).
    Reset {
        #[arg(long)]
        data_source: String,
    },
    /// The running domain's lease table: its basis and, with consensus leasing, the cluster
    /// leader, its term and the voters (asks the Administration Server).
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
    },
}

/// `ferry demo --leasing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoLeasing {
    Database,
    Consensus,
}
