//! A whole domain on lab hosts (ferry-lab): every machine its own network namespace with a
//! Node Manager on its own address, the Administration Server and PostgreSQL in the switch
//! namespace, floating IPs that really move between machines' `eth0`, and a client
//! namespace that keeps asking the floating IP who answers. Used by the fault suite, the
//! cross-host benchmark and `ferry demo --hosts`. Dropping it tears the lab down.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_api::ServerStatus;
use ferry_host::clock;
use ferry_lab::{Lab, LabSpec, CLIENT, SWITCH};

use crate::domain::{wait_running, DomainSpec};
use crate::pg::{PgOptions, PgServer};
use crate::service::ClientLine;

/// Where the Administration Server listens in the lab.
pub const ADMIN_PORT: u16 = 7001;
/// Where each machine's Node Manager listens.
pub const NM_PORT: u16 = 5556;
/// Where the witness listens (in the switch namespace, next to the admin).
pub const WITNESS_PORT: u16 = 5557;
/// Where each server's service listens on its floating IP.
pub const SERVICE_PORT: u16 = 8080;

pub struct LabDomain {
    /// Dropped first: tearing the lab down kills every process in it, PostgreSQL included.
    pub lab: Lab,
    /// PostgreSQL in the switch namespace ([`PgOptions::in_lab`]).
    pub pg: PgServer,
    /// Its synchronous streaming standby, also in the switch namespace (on the next port),
    /// when started with [`LabDomain::start_ha`]; the data source then lists both.
    pub standby: Option<PgServer>,
    /// The domain's data source.
    pub data_source: String,
    pub dir: PathBuf,
    pub domain_file: PathBuf,
    pub exe: PathBuf,
    pub admin_url: String,
    pub spec: DomainSpec,
    /// Each server's floating address and service port.
    pub floating: BTreeMap<String, SocketAddrV4>,
    clients: Vec<tokio::process::Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl LabDomain {
    /// Builds the lab and starts the domain in it; `None` when the lab cannot run here
    /// (not root, tools missing; printed, and a failure under `CI=true`).
    pub async fn start(spec: DomainSpec, exe: &Path, dir: Option<PathBuf>) -> anyhow::Result<Option<LabDomain>> {
        LabDomain::start_ha(spec, exe, dir, None).await
    }

    /// [`LabDomain::start`] with the lease table on a primary and a synchronous streaming
    /// standby whose clock is off by `standby_clock` (libfaketime's `FAKETIME`, e.g. `"+3s"`),
    /// both in the switch namespace; the data source lists both hosts with
    /// `target_session_attrs=read-write`. `None`: one server, as `start`.
    pub async fn start_ha(
        spec: DomainSpec,
        exe: &Path,
        dir: Option<PathBuf>,
        standby_clock: Option<&str>,
    ) -> anyhow::Result<Option<LabDomain>> {
        let machines: Vec<&str> = spec.machines.iter().map(String::as_str).collect();
        let lab_spec = LabSpec { with_client: true, ..LabSpec::new(&machines) };
        let Some(lab) = Lab::up_or_skip(lab_spec).await else {
            return Ok(None);
        };
        let options = PgOptions::in_lab(&lab)?;
        // `pg_ctl` blocks for a fraction of a second (the first time, building the template,
        // for a second or two).
        let pg = tokio::task::spawn_blocking(move || PgServer::start_with(options))
            .await?
            .context("PostgreSQL in the lab")?;
        let (standby, data_source) = match standby_clock {
            None => (None, pg.url()),
            Some(offset) => {
                let options = PgOptions {
                    port: Some(crate::pg::LAB_PORT + 1),
                    clock_offset: Some(offset.to_string()),
                    ..PgOptions::in_lab(&lab)?
                };
                let (pg_back, standby) = tokio::task::spawn_blocking(move || {
                    let standby = pg.start_standby(options);
                    (pg, standby)
                })
                .await?;
                let standby = standby.context("a standby in the lab")?;
                // The primary is reached from the lab's namespaces only: ask from the switch.
                let data_source = format!(
                    "postgres://{}@{addr}:{},{addr}:{}/{}?target_session_attrs=read-write",
                    crate::pg::SUPERUSER,
                    crate::pg::LAB_PORT,
                    crate::pg::LAB_PORT + 1,
                    crate::pg::DATABASE,
                    addr = lab.switch_addr()
                );
                return LabDomain::finish(spec, exe, dir, lab, pg_back, Some(standby), data_source).await;
            }
        };
        LabDomain::finish(spec, exe, dir, lab, pg, standby, data_source).await
    }

    async fn finish(
        spec: DomainSpec,
        exe: &Path,
        dir: Option<PathBuf>,
        lab: Lab,
        pg: PgServer,
        standby: Option<PgServer>,
        data_source: String,
    ) -> anyhow::Result<Option<LabDomain>> {
        let (dir, tmp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                (std::fs::canonicalize(&d)?, None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("ferry-lab-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(dir.join("logs"))?;
        std::fs::create_dir_all(dir.join("journal"))?;
        let mut floating = BTreeMap::new();
        for (i, s) in spec.servers.iter().enumerate() {
            let ip = match spec.floating_ips.iter().find(|(n, _)| n == &s.name) {
                Some((_, ip)) => *ip,
                None => ferry_lab::floating_ip(i as u8)?,
            };
            floating.insert(s.name.clone(), SocketAddrV4::new(ip, SERVICE_PORT));
        }
        let admin_url = format!("http://{}:{ADMIN_PORT}", lab.switch_addr());
        let domain_file = dir.join("domain.toml");
        std::fs::write(&domain_file, domain_toml(&spec, &lab, &data_source, &floating, &dir, exe)?)?;
        let d = LabDomain {
            lab,
            pg,
            standby,
            data_source,
            dir,
            domain_file,
            exe: exe.to_path_buf(),
            admin_url,
            spec,
            floating,
            clients: Vec::new(),
            _tmp: tmp,
        };
        if d.standby.is_some() {
            // Commits wait for the standby from now on (rule 8); `init` then finds it.
            let sql = "ALTER SYSTEM SET synchronous_standby_names = '*'";
            for sql in [sql, "SELECT pg_reload_conf()"] {
                let out = d.psql_in_switch(&d.pg_url_primary(), sql).await?;
                if !out.status.success() {
                    bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
        if !d.spec.consensus {
            let out = d.run_in(SWITCH, &["leasing", "init", "--data-source", &d.data_source]).await?;
            if !out.status.success() {
                bail!("ferry leasing init failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        d.start_admin()?;
        d.wait_cli_ok(&["machines"], Duration::from_secs(20))
            .await
            .context("the Administration Server did not answer")?;
        if d.spec.witness.is_some() {
            d.start_witness()?;
        }
        for m in d.spec.machines.clone() {
            d.start_nm(&m)?;
        }
        let machines = d.spec.machines.clone();
        let until = clock::now() + Duration::from_secs(20);
        loop {
            let out = d.cli(&["machines", "-o", "json"]).await?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let up = v.as_array().map_or(0, |a| a.iter().filter(|m| m["reachable"] == true).count());
            if up == machines.len() {
                break;
            }
            if clock::now() >= until {
                bail!("Node Managers did not all answer: {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Some(d))
    }

    /// The admin's initial Admin token (`DATA/admin.token`), which client commands use.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.join("data").join("admin").join("admin.token")
    }

    fn spawn(&self, node: &str, args: &[&str], env: &[(&str, &str)], log: &str) -> anyhow::Result<()> {
        // Client files stay in the lab's directory, never in the user's home.
        let config = self.dir.join("config").display().to_string();
        let mut all = vec![("FERRY_LOG", "info"), ("FERRY_CONFIG_DIR", config.as_str())];
        all.extend_from_slice(env);
        let child = self.lab.spawn(node, &self.exe, args, &all, &self.dir.join("logs").join(log))?;
        // The lab owns the process (it kills everything in its namespaces); do not reap here.
        std::mem::forget(child);
        Ok(())
    }

    pub fn start_admin(&self) -> anyhow::Result<()> {
        self.spawn(SWITCH, &["admin", "--domain", &self.domain_file.display().to_string()], &[], "admin.log")
    }

    /// Starts the domain's witness (`DomainSpec::witness`) in the switch namespace.
    pub fn start_witness(&self) -> anyhow::Result<()> {
        let name = self.spec.witness.as_deref().context("this lab domain has no witness")?;
        let file = self.domain_file.display().to_string();
        self.spawn(SWITCH, &["witness", "--name", name, "--domain", &file], &[], &format!("witness-{name}.log"))
    }

    /// What `ferry leasing status` says (consensus leasing: leader, term, voters).
    pub async fn leasing(&self) -> anyhow::Result<ferry_api::LeasingStatus> {
        let out = self.cli(&["leasing", "status", "-o", "json"]).await?;
        if !out.status.success() {
            bail!("ferry leasing status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn start_nm(&self, machine: &str) -> anyhow::Result<()> {
        self.start_nm_with_env(machine, &[])
    }

    /// [`LabDomain::start_nm`] with `env` added to the Node Manager's environment, which the
    /// servers it starts (and their services) inherit: e.g. `LD_PRELOAD` of libfaketime to
    /// give one machine its own wall clock.
    pub fn start_nm_with_env(&self, machine: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.spawn(
            machine,
            &["nodemanager", "--machine", machine, "--domain", &self.domain_file.display().to_string()],
            env,
            &format!("nm-{machine}.log"),
        )
    }

    /// Waits until the admin has heard `machine`'s Node Manager answer since this call began.
    /// An older answer does not count: after a crash the admin's view still holds the dead
    /// Node Manager's last answer (reachable) until its poll of the pulled cable times out,
    /// and a Node Manager started again is not listening yet.
    pub async fn wait_nm(&self, machine: &str, patience: Duration) -> anyhow::Result<()> {
        let asked = clock::now();
        let until = asked + patience;
        loop {
            // An answer at most this old came after `asked`.
            let since_ms = clock::now().since(asked);
            let out = self.cli(&["machines", "-o", "json"]).await?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let answered = |m: &serde_json::Value| {
                m["name"] == machine
                    && m["reachable"] == true
                    && m["last_seen_age_ms"].as_u64().is_some_and(|age| age <= since_ms)
            };
            if v.as_array().is_some_and(|a| a.iter().any(answered)) {
                return Ok(());
            }
            if clock::now() >= until {
                bail!("the Node Manager of {machine} did not answer within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `ferry ARGS` in `node`'s namespace.
    pub async fn run_in(&self, node: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let exe = self.exe.display().to_string();
        let mut argv = vec![exe.as_str()];
        argv.extend_from_slice(args);
        Ok(self.lab.run(node, &argv).await?)
    }

    /// The domain CA certificate the admin wrote next to the domain file (client commands
    /// reach the admin over TLS from the switch).
    pub fn ca_file(&self) -> String {
        ferry_host::files::secret_path(&self.domain_file).with_file_name("ca.pem").display().to_string()
    }

    /// Runs a client command against the lab's Administration Server (from the switch),
    /// with the admin's initial Admin token.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        // The admin is not on the switch's loopback: TLS, checked against the domain CA.
        let (ca, token_file) = (self.ca_file(), self.admin_token_file().display().to_string());
        let mut argv =
            vec!["--admin", self.admin_url.as_str(), "--ca", ca.as_str(), "--token-file", token_file.as_str()];
        argv.extend_from_slice(args);
        self.run_in(SWITCH, &argv).await
    }

    async fn wait_cli_ok(&self, args: &[&str], patience: Duration) -> anyhow::Result<()> {
        let until = clock::now() + patience;
        loop {
            if self.cli(args).await.is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if clock::now() >= until {
                bail!("`ferry {}` did not succeed within {patience:?}", args.join(" "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self) -> anyhow::Result<Vec<ServerStatus>> {
        let out = self.cli(&["status", "-o", "json"]).await?;
        if !out.status.success() {
            bail!("ferry status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until `server` runs on `machine` with an epoch above `epoch` (0 for any
    /// instance, the epoch it had for a new one).
    pub async fn wait_running(
        &self,
        server: &str,
        machine: &str,
        epoch: u64,
        patience: Duration,
    ) -> anyhow::Result<ServerStatus> {
        // Each look runs `ferry status` in the switch namespace: poll less often.
        wait_running(|| self.status(), Duration::from_millis(50), server, machine, epoch, patience).await
    }

    pub async fn events(&self) -> anyhow::Result<Vec<ferry_api::Event>> {
        let out = self.cli(&["events", "-o", "json"]).await?;
        if !out.status.success() {
            bail!("ferry events: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Starts a client in the client namespace that asks `server`'s floating IP who answers
    /// every `interval_ms`; read its log with [`LabDomain::client_log`].
    pub fn start_client(&mut self, server: &str, interval_ms: u64) -> anyhow::Result<PathBuf> {
        let target = self.floating.get(server).context("unknown server")?.to_string();
        let log = self.dir.join(format!("client-{server}.jsonl"));
        let child = self.lab.spawn(
            CLIENT,
            &self.exe,
            &[
                "demo-client",
                "--target",
                &target,
                "--log",
                &log.display().to_string(),
                "--interval-ms",
                &interval_ms.to_string(),
            ],
            &[],
            &self.dir.join("logs").join(format!("client-{server}.log")),
        )?;
        self.clients.push(child);
        Ok(log)
    }

    pub fn client_log(&self, server: &str) -> Vec<ClientLine> {
        let path = self.dir.join(format!("client-{server}.jsonl"));
        std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The addresses on `machine`'s eth0.
    pub async fn addresses(&self, machine: &str) -> anyhow::Result<Vec<String>> {
        Ok(self.lab.addresses(machine).await?)
    }

    /// The primary's own data source (one host).
    pub fn pg_url_primary(&self) -> String {
        self.pg.url()
    }

    /// Runs `psql` in the switch namespace (where the lab's PostgreSQL listens).
    pub async fn psql_in_switch(&self, url: &str, sql: &str) -> anyhow::Result<std::process::Output> {
        let psql = self.pg.bin_dir().join("psql");
        let psql = psql.to_string_lossy().into_owned();
        Ok(self.lab.run(SWITCH, &[psql.as_str(), "-X", "-A", "-t", "-c", sql, url]).await?)
    }

    pub fn journal_path(&self, server: &str) -> PathBuf {
        self.dir.join("journal").join(format!("{server}.jsonl"))
    }
}

fn domain_toml(
    spec: &DomainSpec,
    lab: &Lab,
    data_source: &str,
    floating: &BTreeMap<String, SocketAddrV4>,
    dir: &Path,
    exe: &Path,
) -> anyhow::Result<String> {
    let list = |v: &[String]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let leasing = if spec.consensus {
        "basis = \"consensus\"\n".to_string()
    } else {
        format!("basis = \"database\"\ndata_source = \"{data_source}\"\n")
    };
    let mut t = format!(
        "# Written by ferry's lab harness: machines are network namespaces.\nname = \"{}\"\n\n[admin]\nlisten = \"{}:{ADMIN_PORT}\"\n\n[leasing]\n{leasing}",
        spec.name,
        lab.switch_addr(),
    );
    if let Some(w) = &spec.witness {
        t += &format!("\n[[witnesses]]\nname = \"{w}\"\nlisten = \"{}:{WITNESS_PORT}\"\n", lab.switch_addr());
    }
    for m in &spec.machines {
        let addr: Ipv4Addr = lab.addr(m)?;
        t += &format!(
            "\n[[machines]]\nname = \"{m}\"\nnode_manager = \"{addr}:{NM_PORT}\"\ninterface = \"{}\"\nnetmask = \"255.255.255.0\"\n",
            spec.interfaces.iter().find(|(n, _)| n == m).map_or(ferry_lab::HOST_IFACE, |(_, i)| i.as_str())
        );
        if let Some(turns) = spec.starts_per_machine {
            t += &format!("max_concurrent_starts = {turns}\n");
        }
        if let Some((_, hook, timeout_ms)) = spec.ifconfig_hooks.iter().find(|(h, _, _)| h == m) {
            t += &format!("hooks = {{ ifconfig = \"{}\", timeout = \"{timeout_ms}ms\" }}\n", hook.display());
        }
    }
    t += &format!(
        "\n[[clusters]]\nname = \"{}\"\nmigration_candidates = [{}]\nfencing_grace_period = \"{}ms\"\nmigration_retry_delay = \"{}ms\"\n",
        spec.cluster,
        list(&spec.cluster_candidates),
        spec.grace_ms,
        spec.interval_ms * 10
    );
    for s in &spec.servers {
        let fip = floating[&s.name];
        let cmd = [
            exe.display().to_string(),
            "demo-service".into(),
            "--listen".into(),
            fip.to_string(),
            "--journal".into(),
            dir.join("journal").join(format!("{}.jsonl", s.name)).display().to_string(),
        ];
        t += &format!(
            "\n[[servers]]\nname = \"{}\"\ncluster = \"{}\"\nmachine = \"{}\"\nfloating_ip = \"{}\"\ncandidate_machines = [{}]\nhealth_check_interval = \"{}ms\"\nhealth_check_periods_until_fencing = {}\nshutdown_timeout = \"{}ms\"\n\n[[servers.services]]\nname = \"hello\"\ncommand = [{}]\nhealth = {{ tcp = \"{fip}\" }}\n",
            s.name,
            spec.cluster,
            s.home,
            fip.ip(),
            list(&s.candidates),
            spec.interval_ms,
            spec.periods,
            spec.shutdown_timeout_ms,
            list(&cmd),
        );
    }
    Ok(t)
}
