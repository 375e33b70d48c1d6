//! The built-in floating-IP action (`ferry_host::ipaddr`) works for real: it adds, finds and
//! removes addresses, its gratuitous ARP moves a client's neighbour entry to the new holder,
//! its ARP probe sees an address another machine holds, and its errors name the interface
//! and the address.
//!
//! `ipaddr` acts on the namespace of the process calling it, and the root namespace must
//! never be touched. So each test re-runs this test binary *inside* a lab machine (the
//! ignored test `inside_a_lab_namespace`, which refuses to run in the root namespace) with a
//! list of operations in `FERRY_IPADDR_OPS`, and reads one `FERRY-RESULT` line per operation.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_host::ipaddr;
use ferry_lab::{or_skip, require, Lab, LabSpec};

type Result<T = ()> = anyhow::Result<T>;

const OPS_VAR: &str = "FERRY_IPADDR_OPS";
const OUTER_NETNS_VAR: &str = "FERRY_IPADDR_OUTER_NETNS";

/// The network namespace this process is in (`net:[INODE]`).
fn netns_id() -> std::io::Result<String> {
    Ok(std::fs::read_link("/proc/self/ns/net")?.to_string_lossy().into_owned())
}
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);

/// Runs `ops` (one per line: `VERB IFACE IP [PREFIX]`, or `sleep MS`) with `ipaddr` inside
/// `machine`; one `Ok(value)` or `Err(message)` per operation.
async fn in_machine(lab: &Lab, machine: &str, ops: &[&str]) -> Result<Vec<std::result::Result<String, String>>> {
    let exe = std::env::current_exe()?;
    let mut cmd = lab.command(machine, &exe)?;
    // libtest names the test by its path below the crate: `ipaddr::inside_a_lab_namespace`.
    let helper = format!("{}::inside_a_lab_namespace", module_path!().split_once("::").map_or("", |(_, m)| m));
    cmd.args(["--exact", helper.as_str(), "--ignored", "--nocapture", "--test-threads=1", "-q"])
        .env(OPS_VAR, ops.join("\n"))
        .env(OUTER_NETNS_VAR, netns_id()?)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("the helper in the lab namespace timed out")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<_> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FERRY-RESULT "))
        .map(|r| match r.split_once(' ') {
            Some(("ok", v)) => Ok(v.to_string()),
            Some(("err", e)) => Err(e.to_string()),
            _ => Err(format!("unparsable result {r:?}")),
        })
        .collect();
    if !out.status.success() || results.len() != ops.len() {
        bail!("the helper in {machine} failed ({}): {stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(results)
}

/// The helper the other tests run inside a lab machine (see the file's doc).
#[test]
#[ignore = "a helper: the other tests of this file run it inside a lab namespace"]
fn inside_a_lab_namespace() {
    let ops = std::env::var(OPS_VAR).expect("run only by the other tests of this file, with FERRY_IPADDR_OPS set");
    // The outer test passes the namespace it runs in (the root one); this must differ.
    let outer = std::env::var(OUTER_NETNS_VAR).ok();
    let own = netns_id().ok();
    assert!(
        outer.is_some() && own.is_some() && outer != own,
        "refusing to change addresses in the root network namespace ({outer:?} vs {own:?})"
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        for op in ops.lines() {
            let words: Vec<&str> = op.split_whitespace().collect();
            let result = run_op(&words).await;
            match result {
                Ok(v) => println!("FERRY-RESULT ok {v}"),
                Err(e) => println!("FERRY-RESULT err {}", ferry_lab::chain(&*e)),
            }
        }
    });
}

async fn run_op(words: &[&str]) -> std::result::Result<String, Box<dyn std::error::Error>> {
    if let ["sleep", ms] = words {
        tokio::time::sleep(Duration::from_millis(ms.parse()?)).await;
        return Ok(String::new());
    }
    let (verb, iface, ip) = match words {
        [verb, iface, ip, ..] => (*verb, *iface, ip.parse::<Ipv4Addr>()?),
        _ => return Err(format!("bad op {words:?}").into()),
    };
    let len = || -> std::result::Result<u8, Box<dyn std::error::Error>> {
        Ok(words.get(3).ok_or("no prefix length")?.parse()?)
    };
    Ok(match verb {
        "add" => ipaddr::add(iface, ip, len()?).await.map(|()| String::new())?,
        "remove" => ipaddr::remove(iface, ip).await.map(|()| String::new())?,
        "present" => ipaddr::present(iface, ip).await?.to_string(),
        "probe" => ipaddr::probe(iface, ip).await?.to_string(),
        "announce" => format!("{:?}", ipaddr::announce(iface, ip).await?),
        "plumb" => format!("{:?}", ipaddr::plumb(iface, ip, len()?).await?),
        other => return Err(format!("unknown op {other}").into()),
    })
}

async fn lab(machines: &[&str]) -> Option<Lab> {
    or_skip(require(&["ip", "arping", "ping"]))?;
    Lab::up_or_skip(LabSpec::new(machines)).await
}

#[allow(clippy::disallowed_methods)] // reason: measures how fast the announcement takes effect, for the test log
fn stopwatch() -> std::time::Instant {
    std::time::Instant::now()
}

fn ok(s: &str) -> std::result::Result<String, String> {
    Ok(s.to_string())
}

#[tokio::test]
async fn add_present_remove_are_idempotent() -> Result {
    let Some(lab) = lab(&["a", "b"]).await else {
        return Ok(());
    };
    let results = in_machine(
        &lab,
        "a",
        &[
            "present eth0 198.18.1.100",
            "add eth0 198.18.1.100 24",
            "present eth0 198.18.1.100",
            "add eth0 198.18.1.100 24",
        ],
    )
    .await?;
    assert_eq!(results, vec![ok("false"), ok(""), ok("true"), ok("")]);
    assert_eq!(lab.addresses("a").await?, vec!["198.18.1.11/24", "198.18.1.100/24"]);
    assert_eq!(lab.addresses("b").await?, vec!["198.18.1.12/24"]);
    assert!(lab.ping("client", VIP).await?, "the added address answers");

    let results =
        in_machine(&lab, "a", &["remove eth0 198.18.1.100", "present eth0 198.18.1.100", "remove eth0 198.18.1.100"])
            .await?;
    assert_eq!(results, vec![ok(""), ok("false"), ok("")]);
    assert_eq!(lab.addresses("a").await?, vec!["198.18.1.11/24"]);
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn announce_moves_the_clients_neighbour_entry() -> Result {
    let Some(lab) = lab(&["a", "b"]).await else {
        return Ok(());
    };
    let (mac_a, mac_b) = (lab.mac("a")?, lab.mac("b")?);
    let results = in_machine(&lab, "a", &["plumb eth0 198.18.1.100 24"]).await?;
    assert_eq!(results, vec![ok("Added(Sent)")], "announced on the raw socket, not through arping");
    assert!(lab.ping("client", VIP).await?);
    assert_eq!(lab.neighbour("client", VIP).await?, Some(mac_a.clone()));

    // Move it without an announcement: the client keeps talking to a's MAC.
    in_machine(&lab, "a", &["remove eth0 198.18.1.100"]).await?;
    in_machine(&lab, "b", &["add eth0 198.18.1.100 24"]).await?;
    assert_eq!(
        lab.neighbour("client", VIP).await?,
        Some(mac_a.clone()),
        "without a gratuitous ARP the client must still point at a"
    );
    // The announcement, sent on the raw socket before `announce` returns. Meanwhile the client's entry is watched: it must switch to b long before the entry's
    // own reachable time (15-45 s) could run out.
    let announce = in_machine(&lab, "b", &["announce eth0 198.18.1.100", "sleep 1200"]);
    let started = stopwatch();
    let watch = async {
        for _ in 0..400 {
            if lab.neighbour("client", VIP).await?.as_deref() == Some(mac_b.as_str()) {
                return anyhow::Ok(Some(started.elapsed().as_millis()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(None)
    };
    let (results, switched_ms) = tokio::join!(announce, watch);
    assert_eq!(results?, vec![ok("Sent"), ok("")]);
    let switched_ms = switched_ms?.context("the client's entry never pointed at b")?;
    eprintln!("the client's neighbour entry pointed at b ~{switched_ms} ms after the helper started");
    assert!(lab.ping("client", VIP).await?);

    // Announcing an address that is not here is refused.
    let results = in_machine(&lab, "a", &["announce eth0 198.18.1.100"]).await?;
    let err = results[0].clone().unwrap_err();
    assert!(err.contains("not on the interface"), "{err}");
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn the_probe_sees_an_address_another_machine_holds() -> Result {
    let Some(lab) = lab(&["a", "b"]).await else {
        return Ok(());
    };
    in_machine(&lab, "a", &["add eth0 198.18.1.100 24"]).await?;
    let results = in_machine(
        &lab,
        "b",
        &[
            "probe eth0 198.18.1.100",
            "probe eth0 198.18.1.101",
            "plumb eth0 198.18.1.100 24",
            "present eth0 198.18.1.100",
        ],
    )
    .await?;
    assert_eq!(results[0], ok("true"), "a holds .100");
    assert_eq!(results[1], ok("false"), "nobody holds .101");
    let refused = results[2].clone().unwrap_err();
    assert!(refused.contains("another host answers for 198.18.1.100 on eth0"), "{refused}");
    assert_eq!(results[3], ok("false"), "a refused plumb must not add the address");
    lab.down()?;
    Ok(())
}

#[tokio::test]
async fn errors_name_the_interface_and_the_address() -> Result {
    let Some(lab) = lab(&["a"]).await else {
        return Ok(());
    };
    let results = in_machine(
        &lab,
        "a",
        &[
            "add eth9 198.18.1.100 24",
            "add eth0 198.19.5.5 24",
            "add eth0 198.18.1.100 33",
            "probe eth9 198.18.1.100",
            "remove eth9 198.18.1.100",
            "present eth9 198.18.1.100",
        ],
    )
    .await?;
    let errors: Vec<String> = results.into_iter().map(|r| r.expect_err("each of these must fail")).collect();
    let missing = "interface eth9 does not exist in this network namespace";
    assert!(errors[0].contains(missing), "{}", errors[0]);
    assert_eq!(
        errors[1],
        "198.19.5.5 is outside every IPv4 subnet of eth0 (198.18.1.0/24); a floating IP must \
         belong to a subnet the interface is on"
    );
    assert!(errors[2].contains("/33"), "{}", errors[2]);
    for e in &errors[3..] {
        assert!(e.contains(missing), "{e}");
    }
    assert_eq!(lab.addresses("a").await?, vec!["198.18.1.11/24"]);
    lab.down()?;
    Ok(())
}
