//! The domain configuration (`domain.toml`, DESIGN §4): the model every process shares, its
//! parser, and its validation. Every problem is reported with the field's path and, when the
//! text is at hand, its line and column, and says what is allowed.
//!
//! The model is serde-able in the same shape as the file, so the Administration Server can
//! serve it to servers (JSON) and persist changes (TOML) without a second set of types.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{ClusterName, MachineName, ServerName};

mod headroom;
mod locate;

pub use headroom::{Takeover, ASSUMED_START_MS};
use locate::{locate, toml_problem};

/// The seed's defaults.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_PERIODS_UNTIL_FENCING: u32 = 3;
pub const DEFAULT_FENCING_GRACE_PERIOD: Duration = Duration::from_secs(30);
pub const DEFAULT_ADDITIONAL_MIGRATION_ATTEMPTS: u32 = 3;
pub const DEFAULT_MIGRATION_RETRY_DELAY: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub name: String,
    #[serde(default)]
    pub admin: AdminConfig,
    pub leasing: Leasing,
    #[serde(default)]
    pub machines: Vec<Machine>,
    /// Consensus leasing's voters that host no servers (`ferry witness`): what lets a
    /// two-machine domain keep a majority when either machine dies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<Witness>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: default_admin_listen() }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7001))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LeasingBasis {
    #[default]
    Database,
    Consensus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leasing {
    #[serde(default)]
    pub basis: LeasingBasis,
    /// `sqlite://PATH` (relative paths are relative to the domain file) or `postgres://...`;
    /// none with consensus leasing (the voters hold the table).
    #[serde(default)]
    pub data_source: String,
}

/// A voter of consensus leasing that hosts no servers (`ferry witness`), for example on the
/// admin's host. It is enrolled like a Node Manager (its certificate names it as a machine of
/// the domain) but the master never places a server on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witness {
    pub name: MachineName,
    /// Where the witness listens for the voters (mutual TLS).
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub name: MachineName,
    /// Where this machine's Node Manager listens.
    pub node_manager: SocketAddr,
    /// The interface floating IPs are added to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// How many servers this machine's Node Manager starts at once: a start holds its turn
    /// from the lease check until its server reports RUNNING (or exits, or runs out of its
    /// start budget); further starts are accepted at once and wait, restarts after a crash
    /// first. What keeps a mass start from starving the renewals of the servers already up.
    #[serde(default = "default_machine_starts")]
    pub max_concurrent_starts: u32,
}

/// [`Machine::max_concurrent_starts`] unless the domain file says otherwise.
pub const DEFAULT_MACHINE_CONCURRENT_STARTS: u32 = 4;

fn default_machine_starts() -> u32 {
    DEFAULT_MACHINE_CONCURRENT_STARTS
}

/// User scripts that replace the built-in actions (the `wlsifconfig.sh` equivalents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Called as `ifconfig addif|removeif IFACE IP NETMASK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifconfig: Option<String>,
    /// Called as `mount mount|unmount SERVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    #[serde(default = "default_hook_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Hooks {
    fn is_empty(&self) -> bool {
        self.ifconfig.is_none() && self.mount.is_none() && self.timeout == default_hook_timeout()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: ClusterName,
    /// Machines that may host this cluster's migratable servers, in order of preference.
    #[serde(default)]
    pub migration_candidates: Vec<MachineName>,
    #[serde(default = "default_grace", with = "duration")]
    pub fencing_grace_period: Duration,
    /// Circuits of the candidate list the master tries before it gives up (rule 9).
    #[serde(default = "default_attempts")]
    pub additional_auto_migration_attempts: u32,
    /// Pause between two circuits of the candidate list.
    #[serde(default = "default_retry_delay", with = "duration")]
    pub migration_retry_delay: Duration,
    /// Optional power fence (STONITH) run before a server is started elsewhere:
    /// `COMMAND... MACHINE SERVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_command: Option<Vec<String>>,
    /// How many of this cluster's servers `start-cluster` starts at once (each until it is
    /// RUNNING): the cluster-wide bound on top of each machine's `max_concurrent_starts`.
    #[serde(default = "default_cluster_starts")]
    pub max_concurrent_starts: u32,
}

/// [`Cluster::max_concurrent_starts`] unless the domain file says otherwise.
pub const DEFAULT_CLUSTER_CONCURRENT_STARTS: u32 = 8;

fn default_cluster_starts() -> u32 {
    DEFAULT_CLUSTER_CONCURRENT_STARTS
}

fn default_grace() -> Duration {
    DEFAULT_FENCING_GRACE_PERIOD
}
fn default_attempts() -> u32 {
    DEFAULT_ADDITIONAL_MIGRATION_ATTEMPTS
}
fn default_retry_delay() -> Duration {
    DEFAULT_MIGRATION_RETRY_DELAY
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: ServerName,
    pub cluster: ClusterName,
    /// The home machine: where `start` and `start-cluster` start it.
    pub machine: MachineName,
    #[serde(default = "yes")]
    pub auto_migration: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_ip: Option<Ipv4Addr>,
    /// Preferred destinations, in order; the cluster's `migration_candidates` follow.
    #[serde(default)]
    pub candidate_machines: Vec<MachineName>,
    #[serde(default = "default_interval", with = "duration")]
    pub health_check_interval: Duration,
    #[serde(default = "default_periods")]
    pub health_check_periods_until_fencing: u32,
    /// How long a graceful stop may take before the Node Manager kills the server.
    #[serde(default = "default_shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    #[serde(default)]
    pub services: Vec<Service>,
}

fn yes() -> bool {
    true
}
fn default_interval() -> Duration {
    DEFAULT_HEALTH_CHECK_INTERVAL
}
fn default_periods() -> u32 {
    DEFAULT_PERIODS_UNTIL_FENCING
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Server {
    /// The lease's time to live: `health_check_interval × health_check_periods_until_fencing`.
    pub fn lease_ttl(&self) -> Duration {
        self.health_check_interval * self.health_check_periods_until_fencing
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How long a starting service may fail its health check before it counts as unhealthy.
    #[serde(default = "default_start_timeout", with = "duration")]
    pub start_timeout: Duration,
}

fn default_start_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum Health {
    Tcp(SocketAddr),
    Http(String),
    Exec(Vec<String>),
}

/// Durations as the file writes them: `"10s"`, `"500ms"`, `"1m 30s"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(DurationVisitor)
    }

    /// A visitor rather than `String::deserialize`, so that a number or a table in the file
    /// is refused with what a duration looks like, not with "expected a string".
    struct DurationVisitor;

    impl serde::de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration in quotes, like \"500ms\" or \"10s\"")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s).map_err(|e| {
                E::custom(format!("invalid duration {s:?} ({e}): write a number and a unit, like \"500ms\" or \"10s\""))
            })
        }
    }
}

/// One problem in a domain file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `servers[1].candidate_machines`.
    pub field: String,
    /// 1-based line and column, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, "{l}:{c}: ")?;
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// All the problems of one file, printable as `FILE:LINE:COL: field: message` lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            // `FILE:LINE:COL: field: message`, or `FILE: message` for a file that cannot be read.
            match e.line {
                Some(_) => write!(f, "{}:{e}", self.file)?,
                None => write!(f, "{}: {e}", self.file)?,
            }
        }
        Ok(())
    }
}

impl Domain {
    /// Parses and validates a domain file's text. `file` is only used in messages. Every
    /// problem carries a line, a column and the dotted path of its field.
    pub fn parse(file: &str, text: &str) -> Result<Domain, ConfigErrors> {
        let errs = |errors| ConfigErrors { file: file.to_string(), errors };
        let domain: Domain = match toml::from_str(text) {
            Ok(d) => d,
            Err(e) => return Err(errs(vec![toml_problem(text, &e)])),
        };
        let mut problems = domain.problems();
        if problems.is_empty() {
            return Ok(domain);
        }
        locate(text, &mut problems);
        Err(errs(problems))
    }

    /// Validates a model that did not come from a file (an API change).
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors { file: "domain".into(), errors: problems })
        }
    }

    /// Every cross-reference and value problem, in file order.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let mut push =
            |field: String, message: String| out.push(ConfigError { field, line: None, column: None, message });
        if self.name.trim().is_empty() {
            push("name".into(), "must not be empty".into());
        }
        match self.leasing.basis {
            LeasingBasis::Database => {
                let ds = &self.leasing.data_source;
                if ds.is_empty() {
                    push(
                        "leasing.data_source".into(),
                        "database leasing needs a data source: add data_source = \"sqlite://PATH\" or \"postgres://USER@HOST:PORT/DB\" to [leasing] (or use basis = \"consensus\")".into(),
                    );
                } else if !(ds.starts_with("sqlite://")
                    || ds.starts_with("postgres://")
                    || ds.starts_with("postgresql://"))
                {
                    push(
                        "leasing.data_source".into(),
                        format!(
                            "unsupported data source {:?}: use sqlite://PATH or postgres://USER@HOST:PORT/DB",
                            redact_url(ds)
                        ),
                    );
                }
            }
            LeasingBasis::Consensus => {
                if !self.leasing.data_source.is_empty() {
                    push(
                        "leasing.data_source".into(),
                        "consensus leasing keeps the lease table among the Node Managers, not in a database: remove data_source, or use basis = \"database\"".into(),
                    );
                }
                if self.machines.len() < 2 {
                    push(
                        "leasing.basis".into(),
                        "consensus leasing needs at least two machines (a majority of their Node Managers holds the lease table): define more machines, or use basis = \"database\"".into(),
                    );
                }
            }
        }
        if self.leasing.basis == LeasingBasis::Database && !self.witnesses.is_empty() {
            push(
                "witnesses".into(),
                "a witness is a voter of consensus leasing; database leasing has no voters: remove [[witnesses]], or use basis = \"consensus\"".into(),
            );
        }

        let mut machines = BTreeSet::new();
        let mut nm_addrs = BTreeMap::new();
        for (i, m) in self.machines.iter().enumerate() {
            if !machines.insert(&m.name) {
                push(format!("machines[{i}].name"), format!("machine {:?} is defined twice", m.name.as_str()));
            }
            if let Some(other) = nm_addrs.insert(m.node_manager, &m.name) {
                push(
                    format!("machines[{i}].node_manager"),
                    format!("address {} is already used by machine {other}", m.node_manager),
                );
            }
            if m.node_manager == self.admin.listen {
                push(
                    format!("machines[{i}].node_manager"),
                    format!("address {} is the Administration Server's", m.node_manager),
                );
            }
            if let Some(mask) = m.netmask {
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    push(format!("machines[{i}].netmask"), format!("{mask} is not a contiguous netmask"));
                }
            }
            if m.max_concurrent_starts == 0 {
                push(
                    format!("machines[{i}].max_concurrent_starts"),
                    format!("must be at least 1 (the default is {DEFAULT_MACHINE_CONCURRENT_STARTS})"),
                );
            }
            if let Some(iface) = &m.interface {
                if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
                    push(format!("machines[{i}].interface"), format!("{iface:?} is not an interface name"));
                }
            }
        }

        for (i, w) in self.witnesses.iter().enumerate() {
            if !machines.insert(&w.name) {
                push(
                    format!("witnesses[{i}].name"),
                    format!(
                        "{:?} is already the name of a machine or witness: voters need names of their own",
                        w.name.as_str()
                    ),
                );
            }
            if let Some(other) = nm_addrs.insert(w.listen, &w.name) {
                push(format!("witnesses[{i}].listen"), format!("address {} is already used by {other}", w.listen));
            }
            if w.listen == self.admin.listen {
                push(format!("witnesses[{i}].listen"), format!("address {} is the Administration Server's", w.listen));
            }
        }
        // Only real machines host servers.
        let witnesses: BTreeSet<&MachineName> =
            self.witnesses.iter().map(|w| &w.name).filter(|n| self.machine(n).is_none()).collect();
        for w in &witnesses {
            machines.remove(*w);
        }
        let unknown = |m: &MachineName| {
            if witnesses.contains(m) {
                format!(
                    "{:?} is a witness: it votes but hosts no servers; name a machine under [[machines]]",
                    m.as_str()
                )
            } else {
                format!("unknown machine {:?}: define it under [[machines]]", m.as_str())
            }
        };

        let mut clusters = BTreeMap::new();
        for (i, c) in self.clusters.iter().enumerate() {
            if clusters.insert(&c.name, c).is_some() {
                push(format!("clusters[{i}].name"), format!("cluster {:?} is defined twice", c.name.as_str()));
            }
            for (j, m) in c.migration_candidates.iter().enumerate() {
                if !machines.contains(m) {
                    push(format!("clusters[{i}].migration_candidates[{j}]"), unknown(m));
                }
            }
            if c.max_concurrent_starts == 0 {
                push(
                    format!("clusters[{i}].max_concurrent_starts"),
                    format!("must be at least 1 (the default is {DEFAULT_CLUSTER_CONCURRENT_STARTS})"),
                );
            }
            if let Some(cmd) = &c.fence_command {
                if cmd.is_empty() {
                    push(format!("clusters[{i}].fence_command"), "must name a program".into());
                }
            }
        }

        let mut servers = BTreeSet::new();
        let mut ips = BTreeMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            if !servers.insert(&s.name) {
                push(format!("servers[{i}].name"), format!("server {:?} is defined twice", s.name.as_str()));
            }
            let cluster = clusters.get(&s.cluster);
            if cluster.is_none() {
                push(
                    format!("servers[{i}].cluster"),
                    format!("unknown cluster {:?}: define it under [[clusters]]", s.cluster.as_str()),
                );
            }
            if !machines.contains(&s.machine) {
                push(format!("servers[{i}].machine"), unknown(&s.machine));
            }
            for (j, m) in s.candidate_machines.iter().enumerate() {
                if !machines.contains(m) {
                    push(format!("servers[{i}].candidate_machines[{j}]"), unknown(m));
                }
            }
            if s.auto_migration
                && s.candidate_machines.is_empty()
                && cluster.is_some_and(|c| c.migration_candidates.is_empty())
            {
                push(
                    format!("servers[{i}].candidate_machines"),
                    "a migratable server needs at least one candidate machine: set candidate_machines here or migration_candidates on its cluster".into(),
                );
            }
            if s.health_check_interval.is_zero() {
                push(format!("servers[{i}].health_check_interval"), "must be greater than zero".into());
            }
            if self.leasing.basis == LeasingBasis::Consensus && !s.health_check_interval.is_zero() {
                use crate::leadership;
                let interval = s.health_check_interval.as_millis() as u64;
                let ttl = s.lease_ttl().as_millis() as u64;
                let budget = ttl.saturating_sub(interval);
                if leadership::plan_for(budget).is_none() {
                    let shortest = leadership::VoterPlan::with_heartbeat(leadership::MIN_HEARTBEAT);
                    push(
                        format!("servers[{i}].health_check_interval"),
                        format!(
                            "with consensus leasing a new cluster leader answers up to {} ms after the old one dies even at \
                             the fastest heartbeat ({} ms), but this server's lease of {ttl} ms leaves only {budget} ms after \
                             a missed renewal: make the lease at least {} ms (raise health_check_interval or \
                             health_check_periods_until_fencing)",
                            shortest.takeover_ms(),
                            leadership::MIN_HEARTBEAT.as_millis(),
                            (shortest.takeover_ms() * 100).div_ceil(85) + interval,
                        ),
                    );
                }
            }
            if s.health_check_periods_until_fencing < 2 {
                push(
                    format!("servers[{i}].health_check_periods_until_fencing"),
                    "must be at least 2, so the lease outlives one renewal interval (3, the default, also survives one lost renewal)".into(),
                );
            }
            if let Some(ip) = s.floating_ip {
                if let Some(other) = ips.insert(ip, &s.name) {
                    push(
                        format!("servers[{i}].floating_ip"),
                        format!("{ip} is already the floating IP of server {other}"),
                    );
                }
                if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
                    push(format!("servers[{i}].floating_ip"), format!("{ip} cannot be a floating IP"));
                }
            }
            let mut names = BTreeSet::new();
            for (j, svc) in s.services.iter().enumerate() {
                if svc.name.is_empty() || !names.insert(&svc.name) {
                    push(
                        format!("servers[{i}].services[{j}].name"),
                        format!("service names must be non-empty and unique within a server (got {:?})", svc.name),
                    );
                }
                if svc.command.is_empty() || svc.command[0].is_empty() {
                    push(
                        format!("servers[{i}].services[{j}].command"),
                        "must name a program: command = [\"/path/to/program\", \"arg\"]".into(),
                    );
                }
                match &svc.health {
                    Some(Health::Exec(cmd)) if cmd.is_empty() => push(
                        format!("servers[{i}].services[{j}].health"),
                        "exec health check must name a program".into(),
                    ),
                    Some(Health::Http(url)) if !url.starts_with("http://") => push(
                        format!("servers[{i}].services[{j}].health"),
                        format!("http health check {url:?} must be an http:// URL"),
                    ),
                    _ => {}
                }
            }
        }
        out
    }

    /// The voters' timing for consensus leasing: the one that fits a change of leader into
    /// the shortest lease's budget after a missed renewal (`ferry validate` refuses leases
    /// no plan fits; then this is the fastest plan).
    pub fn voter_plan(&self) -> crate::leadership::VoterPlan {
        use crate::leadership;
        let budget = self
            .servers
            .iter()
            .map(|s| (s.lease_ttl().as_millis() as u64).saturating_sub(s.health_check_interval.as_millis() as u64))
            .min()
            .unwrap_or(u64::MAX / 100);
        leadership::plan_for(budget).unwrap_or_else(|| leadership::VoterPlan::with_heartbeat(leadership::MIN_HEARTBEAT))
    }

    /// Consensus leasing's voters, by name, with where each listens: every machine's Node
    /// Manager, in the domain file's order (the first one starts the cluster).
    pub fn voters(&self) -> Vec<(String, SocketAddr)> {
        let machines = self.machines.iter().map(|m| (m.name.to_string(), m.node_manager));
        machines.chain(self.witnesses.iter().map(|w| (w.name.to_string(), w.listen))).collect()
    }

    pub fn witness(&self, name: &MachineName) -> Option<&Witness> {
        self.witnesses.iter().find(|w| &w.name == name)
    }

    /// Whether `name` may enroll (get a certificate of the domain): a machine or a witness.
    pub fn enrolls(&self, name: &MachineName) -> bool {
        self.machine(name).is_some() || self.witness(name).is_some()
    }

    /// Valid, but fragile consensus leasing: an even number of voters (two stop leasing when
    /// either dies; more stop on an even split, which the seed would survive on the leader's
    /// side: openraft's quorums are majorities, see ARCHITECTURE.md), or leases so short that
    /// the voters run faster than their defaults, where a heartbeat late on a busy host starts
    /// an election that holds every renewal up.
    pub fn leasing_warnings(&self) -> Vec<String> {
        use crate::leadership;
        let mut out = Vec::new();
        if self.leasing.basis != LeasingBasis::Consensus {
            return out;
        }
        let voters = self.voters().len();
        if voters == 2 {
            out.push(
                "consensus leasing with two voters: a majority of two is both, so losing either machine stops every lease \
                 and every server fences itself; add a witness ([[witnesses]] name and listen, run with `ferry witness`) \
                 on a third host, for example the admin's"
                    .to_string(),
            );
        } else if voters.is_multiple_of(2) {
            out.push(format!(
                "consensus leasing with {voters} voters: an even split ({} against {}) leaves neither side a majority, so \
                 every server fences itself until it heals; add a witness ([[witnesses]], `ferry witness`) on a host of \
                 its own to make the number of voters odd",
                voters / 2,
                voters / 2
            ));
        }
        let plan = self.voter_plan();
        let default = leadership::VoterPlan::with_heartbeat(leadership::HEARTBEAT);
        if plan.heartbeat < default.heartbeat {
            // The shortest lease whose budget (TTL − interval) fits the default takeover.
            let budget = default.takeover_ms() * 100 / 85 + 1;
            out.push(format!(
                "consensus leasing: the shortest lease leaves the voters {} ms heartbeats and elections after {}–{} ms \
                 (the defaults are {} ms and {}–{} ms); on a busy host a heartbeat that late starts an election, which \
                 holds every renewal up for up to {} ms; leases whose TTL minus health_check_interval is at least {budget} ms \
                 let the voters run at their defaults",
                plan.heartbeat.as_millis(),
                plan.election_min.as_millis(),
                plan.election_max.as_millis(),
                default.heartbeat.as_millis(),
                default.election_min.as_millis(),
                default.election_max.as_millis(),
                plan.takeover_ms()
            ));
        }
        out
    }

    pub fn machine(&self, name: &MachineName) -> Option<&Machine> {
        self.machines.iter().find(|m| &m.name == name)
    }
    pub fn cluster(&self, name: &ClusterName) -> Option<&Cluster> {
        self.clusters.iter().find(|c| &c.name == name)
    }
    pub fn server(&self, name: &ServerName) -> Option<&Server> {
        self.servers.iter().find(|s| &s.name == name)
    }
    pub fn servers_in<'a>(&'a self, cluster: &'a ClusterName) -> impl Iterator<Item = &'a Server> {
        self.servers.iter().filter(move |s| &s.cluster == cluster)
    }

    /// The machines a server may move to, in the master's order of preference: its own
    /// `candidate_machines`, then its cluster's `migration_candidates`, without repeats.
    pub fn candidates_for(&self, server: &Server) -> Vec<MachineName> {
        let mut out: Vec<MachineName> = Vec::new();
        let cluster = self.cluster(&server.cluster).map(|c| c.migration_candidates.as_slice());
        for m in server.candidate_machines.iter().chain(cluster.unwrap_or(&[])) {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

/// Removes a password from a URL for messages and logs (`postgres://u:secret@h` → `postgres://u:***@h`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(p) => p,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

// ---- where a problem is: line, column and field path ----
//
// Validation problems know their field path and look up its position in the document. Errors
// from toml come the other way round: a byte span and serde's message, no field. So the
// document (which parsed, or the error would be a syntax error) is walked for the deepest key,
// value or table at that span, which gives the same dotted path the validation uses, and
// serde's message is rewritten into what the field expects and what it got. A syntax error
// has no document to walk: the text before its statement is parsed instead, which gives the
// table it is in, and the statement's own line gives the key.
