//! What every loopback scenario does the same way: its runs one after another, each with a
//! progress line, each on a fresh domain checked for safety afterwards, and the tail of its
//! report (safety, failed runs, retried setups).

use std::future::Future;
use std::path::{Path, PathBuf};

use ferry_testkit::Harness;
use serde::Serialize;

use crate::common::{self, Timings};

/// What every run records besides its measurements (flattened into its JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunInfo {
    pub run: usize,
    pub dir: String,
    /// Domains started for this run (more than one when ms1 did not become master).
    pub setup_attempts: u32,
    /// `None` when the journals show no two instances at once; else the violation.
    pub safety_violation: Option<String>,
    pub error: Option<String>,
}

/// One run of a scenario.
pub(crate) trait Run: Default {
    fn info(&self) -> &RunInfo;
    fn info_mut(&mut self) -> &mut RunInfo;
    /// Its measurements on one line, for the progress output.
    fn progress(&self) -> String;
}

/// A run measured on a fresh domain ([`common::setup`]).
pub(crate) trait OnDomain: Run {
    /// Causes the failure and records what it measured.
    fn measure(&mut self, h: &Harness, t: Timings) -> impl Future<Output = anyhow::Result<()>>;
}

/// A scenario's runs, with the machine's load before and after (flattened into its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Runs<R> {
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub runs: Vec<R>,
}

impl<R: Run> Runs<R> {
    /// The runs that measured (the tables' samples).
    pub fn ok(&self) -> Vec<&R> {
        self.runs.iter().filter(|r| r.info().error.is_none()).collect()
    }
}

/// Runs `one` `n` times, run `i` in `base/run-00i`, printing a progress line after each.
pub(crate) async fn each<R, F, Fut>(what: &str, base: &Path, n: usize, mut one: F) -> Runs<R>
where
    R: Run,
    F: FnMut(R, PathBuf) -> Fut,
    Fut: Future<Output = R>,
{
    let loadavg_before = common::loadavg();
    let mut runs = Vec::new();
    for i in 1..=n {
        let dir = base.join(format!("run-{i:03}"));
        let mut r = R::default();
        *r.info_mut() = RunInfo { run: i, dir: dir.display().to_string(), ..RunInfo::default() };
        let r = one(r, dir).await;
        let line = match &r.info().error {
            Some(e) => format!("FAILED: {e} (see {})", r.info().dir),
            None => r.progress(),
        };
        eprintln!("{what} {i}/{n}: {line}");
        runs.push(r);
    }
    Runs { loadavg_before, loadavg_after: common::loadavg(), runs }
}

/// One run on a fresh domain: set up, measure, then check the journals.
pub(crate) async fn on_fresh_domain<R: OnDomain>(exe: &Path, t: Timings, mut r: R, dir: PathBuf) -> R {
    let run = r.info().run;
    let (h, d, attempts) = common::setup(exe, &dir, run, t).await;
    r.info_mut().dir = d.display().to_string();
    r.info_mut().setup_attempts = attempts;
    let h = match h {
        Ok(h) => h,
        Err(e) => {
            r.info_mut().error = Some(e);
            return r;
        }
    };
    if let Err(e) = r.measure(&h, t).await {
        r.info_mut().error = Some(format!("{e:#}"));
    }
    r.info_mut().safety_violation = common::safety(&h).err();
    r
}

/// The report's last lines: how many runs were safe (`checked` says what the journals
/// showed), the runs that failed and those whose domain was set up again.
pub(crate) fn print_tail<R: Run>(runs: &[R], checked: &str) {
    let unsafe_runs: Vec<&RunInfo> = runs.iter().map(Run::info).filter(|r| r.safety_violation.is_some()).collect();
    println!(
        "- safety (journals: {checked}): {}/{} runs clean{}",
        runs.len() - unsafe_runs.len(),
        runs.len(),
        if unsafe_runs.is_empty() { "" } else { "  <- VIOLATION" }
    );
    for r in unsafe_runs {
        println!("  - run {}: {} ({})", r.run, r.safety_violation.as_deref().unwrap_or(""), r.dir);
    }
    let failed: Vec<&RunInfo> = runs.iter().map(Run::info).filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        println!("- failed runs (not in the table): {}", failed.len());
        for r in failed {
            println!("  - run {}: {} ({})", r.run, r.error.as_deref().unwrap_or(""), r.dir);
        }
    }
    let retried = runs.iter().filter(|r| r.info().setup_attempts > 1).count();
    if retried > 0 {
        println!("- runs whose first domain did not make ms1 master (domain restarted before measuring): {retried}");
    }
}
