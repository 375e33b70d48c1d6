//! A whole domain of real `ferry` processes on one host: an Administration Server and one
//! Node Manager per machine, each tagged in its environment so that "kill machine C" can
//! find and kill every process of that machine, whoever its parent is by then. Used by
//! `ferry demo`, the process tests and the benchmark. Dropping a [`Harness`] kills everything
//! it started, also when a test fails. Its processes keep their client files in the harness
//! directory (`FERRY_CONFIG_DIR`), never in the user's home, and it calls the admin with the
//! initial Admin token the admin made.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_api::{AdminClient, NmClient, ServerStatus};
use ferry_host::{clock, process};

use crate::domain::{wait_running, wait_until, DomainSpec};
use crate::service::probe;

/// The environment variable every process of a harness machine carries.
pub const TAG_VAR: &str = "FERRY_MACHINE_TAG";

/// A free TCP port on loopback, below the kernel's ephemeral range (bound and released).
///
/// Not an ephemeral port: a listener-to-be on one can lose it to an outgoing connection,
/// and a TCP health check of a port nobody listens on yet can even connect to itself (Linux
/// picks the same port as its source: a "self-connect"), which then holds the port and
/// looks like a healthy service. The failover benchmark hit both.
pub fn free_port() -> anyhow::Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let (low, high) = port_window();
    let span = u32::from(high - low);
    // Start somewhere different in each process, then walk.
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..span {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = low + ((seed.wrapping_add(i)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free TCP port in {low}..{high} on 127.0.0.1")
}

/// Ports to hand out: from 20000 up to below the start of the ephemeral range.
fn port_window() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 21_000 {
        (20_000, ephemeral_low)
    } else {
        // An unusual range: take the ports above it.
        (61_000, 65_000)
    }
}

pub struct Harness {
    pub dir: PathBuf,
    pub domain_file: PathBuf,
    pub admin_url: String,
    pub spec: DomainSpec,
    pub exe: PathBuf,
    /// Where each server's service answers (the "floating" address on one host).
    pub service_addr: BTreeMap<String, SocketAddr>,
    pub nm_addr: BTreeMap<String, SocketAddr>,
    tag: String,
    /// The admin's initial Admin token (from `DATA/admin.token`), read when it starts.
    admin_token: String,
    children: Vec<tokio::process::Child>,
    /// Keeps a temporary directory alive (and removes it) when the harness made one.
    _tmp: Option<tempfile::TempDir>,
}

impl Harness {
    /// Writes the domain file and starts the Administration Server and every Node Manager.
    pub async fn start(spec: DomainSpec, exe: &Path, dir: Option<PathBuf>) -> anyhow::Result<Harness> {
        ferry_tls::install_crypto_provider();
        let (dir, tmp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                (std::fs::canonicalize(&d)?, None)
            }
            // FERRY_TEST_KEEP=1 keeps the directory (logs, events, journals) for a post-mortem.
            None if std::env::var_os("FERRY_TEST_KEEP").is_some() => {
                let t = tempfile::Builder::new().prefix("ferry-").tempdir()?.keep();
                eprintln!("harness directory kept: {}", t.display());
                (t, None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("ferry-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let admin_port = free_port()?;
        let mut nm_addr = BTreeMap::new();
        for m in &spec.machines {
            nm_addr.insert(m.clone(), SocketAddr::from(([127, 0, 0, 1], free_port()?)));
        }
        let mut service_addr = BTreeMap::new();
        for s in &spec.servers {
            service_addr.insert(s.name.clone(), SocketAddr::from(([127, 0, 0, 1], free_port()?)));
        }
        let tag = format!("ferry-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let domain_file = dir.join("domain.toml");
        let text = domain_toml(&spec, &dir, admin_port, &nm_addr, &service_addr, exe);
        std::fs::write(&domain_file, text).with_context(|| format!("cannot write {}", domain_file.display()))?;
        let mut h = Harness {
            dir: dir.clone(),
            domain_file,
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            spec,
            exe: exe.to_path_buf(),
            service_addr,
            nm_addr,
            tag,
            admin_token: String::new(),
            children: Vec::new(),
            _tmp: tmp,
        };
        h.start_admin().await?;
        for m in h.spec.machines.clone() {
            h.start_nm(&m).await?;
        }
        Ok(h)
    }

    /// A client of the admin with its initial Admin token.
    pub fn admin(&self) -> AdminClient {
        AdminClient::with_token(&self.admin_url, &self.admin_token, Duration::from_secs(30))
    }

    /// The admin's initial Admin token, as the admin wrote it to `DATA/admin.token`.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// `DATA/admin.token` of the admin (its default data directory).
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.join("data").join("admin").join("admin.token")
    }

    /// `FERRY_CONFIG_DIR` of every process the harness starts: where the admin leaves its
    /// client token file, and where a `ferry` client command started with it finds it.
    pub fn client_config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    fn machine_tag(&self, machine: &str) -> String {
        format!("{}/{machine}", self.tag)
    }

    fn spawn(&mut self, args: Vec<String>, tag: String, log: &str) -> anyhow::Result<()> {
        // Client files stay in the harness directory, never in the user's home.
        let mut env = vec![
            (TAG_VAR.into(), tag),
            ("FERRY_LOG".into(), "info".into()),
            ("FERRY_CONFIG_DIR".into(), self.client_config_dir().display().to_string()),
        ];
        env.extend(self.spec.env.iter().cloned());
        let spec = process::SpawnSpec {
            program: self.exe.clone(),
            args,
            env,
            log_file: Some(self.dir.join("logs").join(log)),
            new_group: true,
            ..Default::default()
        };
        let child = process::spawn(&spec).with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.children.push(child);
        Ok(())
    }

    /// Starts (or restarts) the Administration Server and waits until it answers to its
    /// initial Admin token.
    pub async fn start_admin(&mut self) -> anyhow::Result<()> {
        let args = vec!["admin".into(), "--domain".into(), self.domain_file.display().to_string()];
        let tag = self.machine_tag("admin");
        self.spawn(args, tag, "admin.log")?;
        let (url, path) = (self.admin_url.clone(), self.admin_token_file());
        let token = std::cell::RefCell::new(String::new());
        wait_until(Duration::from_secs(20), "the Administration Server to answer", || async {
            let Ok(t) = std::fs::read_to_string(&path) else { return false };
            let ok = AdminClient::with_token(&url, t.trim(), Duration::from_secs(30)).domain().await.is_ok();
            *token.borrow_mut() = t.trim().to_string();
            ok
        })
        .await?;
        self.admin_token = token.into_inner();
        Ok(())
    }

    /// Kills the Administration Server (SIGKILL).
    pub fn kill_admin(&self) -> usize {
        process::kill_tagged(TAG_VAR, &self.machine_tag("admin"))
    }

    /// Starts (or restarts) a machine's Node Manager and waits until it answers.
    pub async fn start_nm(&mut self, machine: &str) -> anyhow::Result<()> {
        let args = vec![
            "nodemanager".into(),
            "--machine".into(),
            machine.into(),
            "--domain".into(),
            self.domain_file.display().to_string(),
        ];
        let tag = self.machine_tag(machine);
        self.spawn(args, tag, &format!("nm-{machine}.log"))?;
        let nm = self.nm_client(machine, Duration::from_secs(2)).await?;
        wait_until(Duration::from_secs(20), &format!("the Node Manager of {machine} to answer"), || async {
            nm.health().await.is_ok()
        })
        .await
    }

    /// The admin's certificate and key (`DATA/pki/admin.*`), once the admin has made them.
    pub async fn admin_credentials(&self) -> anyhow::Result<ferry_tls::Credentials> {
        let dir = ferry_host::files::domain_dir(&self.domain_file).join("data").join("admin").join("pki");
        let mut last = None;
        for _ in 0..200 {
            match ferry_tls::Credentials::load(&dir, "admin") {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the admin's certificate did not appear in {}: {:?}", dir.display(), last)
    }

    /// A client of `machine`'s Node Manager with the admin's certificate.
    pub async fn nm_client(&self, machine: &str, timeout: Duration) -> anyhow::Result<NmClient> {
        let creds = self.admin_credentials().await?;
        let addr = self.nm_addr.get(machine).context("unknown machine")?.to_string();
        Ok(NmClient::new(&addr, machine, &creds, timeout))
    }

    /// A certificate for `server` issued by `machine`'s Node Manager's issuing key, as that
    /// Node Manager gives its servers (tests of who may command a Node Manager).
    pub fn server_credentials(&self, machine: &str, server: &str) -> anyhow::Result<ferry_tls::Credentials> {
        let dir =
            ferry_host::files::domain_dir(&self.domain_file).join("data").join(format!("nm-{machine}")).join("pki");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("{}", dir.join(f).display()));
        let issuer = ferry_tls::MachineIssuer::from_pem(&read("issuer.pem")?, &read("issuer.key")?)?;
        Ok(issuer.issue_server(server, &read("ca.pem")?)?)
    }

    /// A client of `machine`'s Node Manager with these credentials.
    pub fn nm_client_as(&self, machine: &str, creds: &ferry_tls::Credentials) -> NmClient {
        NmClient::new(&self.nm_addr[machine].to_string(), machine, creds, Duration::from_secs(2))
    }

    /// The domain secret the admin created.
    pub async fn secret(&self) -> anyhow::Result<String> {
        let path = ferry_host::files::secret_path(&self.domain_file);
        Ok(ferry_host::files::wait_for_secret(&path, Duration::from_secs(20)).await?)
    }

    /// A crash of the whole machine: SIGKILL of its Node Manager and every process it started.
    pub fn kill_machine(&self, machine: &str) -> usize {
        process::kill_tagged(TAG_VAR, &self.machine_tag(machine))
    }

    /// A clean stop of the Node Manager alone (SIGTERM), waiting until it exited; its servers
    /// keep running.
    pub async fn stop_nm(&self, machine: &str) -> anyhow::Result<()> {
        let nms: Vec<i32> = self
            .machine_pids(machine)
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                cmdline.split(|&b| b == 0).any(|a| a == b"nodemanager")
            })
            .collect();
        for &pid in &nms {
            process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        wait_until(Duration::from_secs(20), &format!("the Node Manager of {machine} to exit"), || async {
            nms.iter().all(|&p| !process::alive(p))
        })
        .await
    }

    /// `machine`'s Node Manager's data directory.
    pub fn nm_data_dir(&self, machine: &str) -> PathBuf {
        ferry_host::files::domain_dir(&self.domain_file).join("data").join(format!("nm-{machine}"))
    }

    /// A crash of the Node Manager alone (SIGKILL); its servers keep running.
    pub fn kill_nm_only(&self, machine: &str) -> usize {
        let mut n = 0;
        for pid in self.machine_pids(machine) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|&b| b == 0).any(|a| a == b"nodemanager")
                && process::signal(pid, nix::sys::signal::Signal::SIGKILL)
            {
                n += 1;
            }
        }
        n
    }

    /// Every live process of a machine.
    pub fn machine_pids(&self, machine: &str) -> Vec<i32> {
        process::pids_with_env(TAG_VAR, &self.machine_tag(machine)).into_iter().filter(|&p| process::alive(p)).collect()
    }

    pub fn journal_path(&self, server: &str) -> PathBuf {
        self.dir.join("journal").join(format!("{server}.jsonl"))
    }

    /// Asks a server's service who answers at its address right now.
    pub async fn who_answers(&self, server: &str) -> Option<serde_json::Value> {
        let addr = *self.service_addr.get(server)?;
        probe(addr, Duration::from_millis(300)).await
    }

    /// Waits until `server`'s service answers from `machine`; returns the answer.
    pub async fn wait_answer_from(
        &self,
        server: &str,
        machine: &str,
        patience: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let until = clock::now() + patience;
        loop {
            if let Some(v) = self.who_answers(server).await {
                if v["machine"] == machine {
                    return Ok(v);
                }
            }
            if clock::now() >= until {
                bail!("{server} did not answer from {machine} within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn status(&self) -> anyhow::Result<Vec<ServerStatus>> {
        Ok(self.admin().servers().await?)
    }

    /// Waits until `server` is RUNNING on `machine` (lease held there) with an epoch above
    /// `epoch`: 0 for any instance, the epoch it had for a new one.
    pub async fn wait_running(
        &self,
        server: &str,
        machine: &str,
        epoch: u64,
        patience: Duration,
    ) -> anyhow::Result<ServerStatus> {
        let admin = self.admin();
        let status = || async { Ok(admin.servers().await?) };
        wait_running(status, Duration::from_millis(25), server, machine, epoch, patience).await
    }

    /// Kills every process this harness started, on every machine.
    pub fn shutdown(&mut self) {
        let mut tags: Vec<String> = self.spec.machines.iter().map(|m| self.machine_tag(m)).collect();
        tags.push(self.machine_tag("admin"));
        for t in tags {
            process::kill_tagged(TAG_VAR, &t);
        }
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The `i`th server's floating IP: 198.18.1.101 on, 250 to a /24 (198.18.2.1 follows
/// 198.18.1.250), so a domain of hundreds of servers stays inside 198.18.0.0/15.
fn floating_ip(i: usize) -> std::net::Ipv4Addr {
    let n = 100 + i;
    std::net::Ipv4Addr::new(198, 18, (1 + n / 250) as u8, (1 + n % 250) as u8)
}

fn list(items: &[String]) -> String {
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

fn domain_toml(
    spec: &DomainSpec,
    dir: &Path,
    admin_port: u16,
    nms: &BTreeMap<String, SocketAddr>,
    services: &BTreeMap<String, SocketAddr>,
    exe: &Path,
) -> String {
    let leasing = if spec.consensus {
        "basis = \"consensus\"\n".to_string()
    } else {
        let ds = spec.data_source.clone().unwrap_or_else(|| "sqlite://data/leases.db".into());
        format!("basis = \"database\"\ndata_source = \"{ds}\"\n")
    };
    let mut t = format!(
        "# Written by ferry's harness: {} machines, cluster {}.\nname = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[leasing]\n{leasing}",
        spec.machines.len(),
        spec.cluster,
        spec.name
    );
    for m in &spec.machines {
        t += &format!("\n[[machines]]\nname = \"{m}\"\nnode_manager = \"{}\"\n", nms[m]);
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
    for (i, s) in spec.servers.iter().enumerate() {
        let addr = services[&s.name];
        let mut cmd = spec.service_prefix.clone();
        cmd.extend([exe.display().to_string(), "demo-service".into(), "--listen".into(), addr.to_string()]);
        if spec.journal {
            cmd.push("--journal".into());
            cmd.push(dir.join("journal").join(format!("{}.jsonl", s.name)).display().to_string());
        }
        t += &format!(
            "\n[[servers]]\nname = \"{}\"\ncluster = \"{}\"\nmachine = \"{}\"\nfloating_ip = \"{}\"\ncandidate_machines = [{}]\nhealth_check_interval = \"{}ms\"\nhealth_check_periods_until_fencing = {}\nshutdown_timeout = \"{}ms\"\n\n[[servers.services]]\nname = \"hello\"\ncommand = [{}]\nhealth = {{ tcp = \"{addr}\" }}\n",
            s.name,
            spec.cluster,
            s.home,
            floating_ip(i),
            list(&s.candidates),
            spec.interval_ms,
            spec.periods,
            spec.shutdown_timeout_ms,
            list(&cmd),
        );
    }
    if spec.journal {
        let _ = std::fs::create_dir_all(dir.join("journal"));
    }
    t
}
