//! The domain file's error table: broken files and the exact report of each, one
//! `FILE:LINE:COL: FIELD: MESSAGE` line per problem (DESIGN §4: every error in a domain file
//! names the file, line and field, and says what is allowed). Syntax errors, values serde
//! refuses, unknown and missing keys, and validation problems all come out the same way.

use ferry_core::domain::Domain;

/// A valid domain that every case breaks in one place. Line 1 is `name = "d"`.
const BASE: &str = r#"name = "d"

[admin]
listen = "127.0.0.1:7001"

[leasing]
basis = "database"
data_source = "sqlite://leases.db"

[[machines]]
name = "m1"
node_manager = "127.0.0.1:5556"
netmask = "255.255.255.0"

[[machines]]
name = "m2"
node_manager = "127.0.0.1:5557"

[[clusters]]
name = "c1"
migration_candidates = ["m1", "m2"]
fencing_grace_period = "30s"

[[clusters]]
name = "c2"

[[servers]]
name = "ms1"
cluster = "c1"
machine = "m1"
floating_ip = "198.18.1.101"
candidate_machines = ["m2"]
health_check_interval = "10s"
health_check_periods_until_fencing = 3

[[servers.services]]
name = "broker"
command = ["/opt/broker", "--port", "9000"]
health = { tcp = "127.0.0.1:9000" }

[[servers]]
name = "ms2"
cluster = "c2"
machine = "m2"
candidate_machines = ["m1"]

[[servers.services]]
name = "tx"
command = ["/opt/tx"]
health = { exec = ["/opt/tx-check"] }
"#;

/// `BASE` with each `from` replaced (its first occurrence) by `to`.
fn edit(edits: &[(&str, &str)]) -> String {
    let mut text = BASE.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "case text {from:?} not in the base domain");
        text = text.replacen(from, to, 1);
    }
    text
}

/// `BASE` without its servers, with `top` added after line 1.
fn without_servers(top: &str) -> String {
    let cut = BASE.find("[[servers]]").expect("the base has servers");
    BASE[..cut].replacen("name = \"d\"\n", &format!("name = \"d\"\n{top}"), 1)
}

fn report(text: &str) -> String {
    match Domain::parse("bad.toml", text) {
        Ok(_) => "valid".to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_base_is_valid() {
    assert_eq!(report(BASE), "valid");
    assert_eq!(report(&without_servers("")), "valid");
}

#[test]
fn every_error_names_file_line_column_and_field() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "a node manager address that is not IP:PORT",
            edit(&[("node_manager = \"127.0.0.1:5556\"", "node_manager = \"localhost\"")]),
            &[
                r#"bad.toml:12:16: machines[0].node_manager: expected IP:PORT, like "127.0.0.1:5556", got the string "localhost""#,
            ],
        ),
        (
            "a bad admin listen address",
            edit(&[("listen = \"127.0.0.1:7001\"", "listen = \"7001\"")]),
            &[r#"bad.toml:4:10: admin.listen: expected IP:PORT, like "127.0.0.1:5556", got the string "7001""#],
        ),
        (
            "a bad floating IP",
            edit(&[("floating_ip = \"198.18.1.101\"", "floating_ip = \"198.18.1\"")]),
            &[
                r#"bad.toml:31:15: servers[0].floating_ip: expected an IPv4 address, like "192.0.2.10", got the string "198.18.1""#,
            ],
        ),
        (
            "a netmask of the wrong type",
            edit(&[("netmask = \"255.255.255.0\"", "netmask = 24")]),
            &[r#"bad.toml:13:11: machines[0].netmask: expected a netmask, like "255.255.255.0", got the number 24"#],
        ),
        (
            "a netmask with holes",
            edit(&[("netmask = \"255.255.255.0\"", "netmask = \"255.0.255.0\"")]),
            &[r#"bad.toml:13:11: machines[0].netmask: 255.0.255.0 is not a contiguous netmask"#],
        ),
        (
            "a tcp health check without a port",
            edit(&[("health = { tcp = \"127.0.0.1:9000\" }", "health = { tcp = \"nowhere\" }")]),
            &[
                r#"bad.toml:39:18: servers[0].services[0].health.tcp: expected IP:PORT, like "127.0.0.1:5556", got the string "nowhere""#,
            ],
        ),
        (
            "a health check of an unknown kind",
            edit(&[("health = { tcp = \"127.0.0.1:9000\" }", "health = { udp = \"127.0.0.1:9000\" }")]),
            &[
                r#"bad.toml:39:12: servers[0].services[0].health.udp: "udp" is not allowed here: use one of tcp, http, exec"#,
            ],
        ),
        (
            "an empty health check",
            edit(&[("health = { tcp = \"127.0.0.1:9000\" }", "health = {}")]),
            &[
                r#"bad.toml:39:10: servers[0].services[0].health: expected a table with one of the keys tcp, http, exec, got an empty table"#,
            ],
        ),
        (
            "a health check as a string",
            edit(&[("health = { tcp = \"127.0.0.1:9000\" }", "health = \"tcp\"")]),
            &[
                r#"bad.toml:39:10: servers[0].services[0].health: expected a table with one of the keys tcp, http, exec, got the string "tcp""#,
            ],
        ),
        (
            "a health check of two kinds",
            edit(&[(
                "health = { tcp = \"127.0.0.1:9000\" }",
                "health = { tcp = \"127.0.0.1:9000\", http = \"http://h/\" }",
            )]),
            &[
                r#"bad.toml:39:10: servers[0].services[0].health: expected a table with one of the keys tcp, http, exec, got more than one key"#,
            ],
        ),
        (
            "an http health check that is not http://",
            edit(&[("health = { tcp = \"127.0.0.1:9000\" }", "health = { http = \"ftp://h/\" }")]),
            &[r#"bad.toml:39:10: servers[0].services[0].health: http health check "ftp://h/" must be an http:// URL"#],
        ),
        (
            "an empty exec health check",
            edit(&[("health = { exec = [\"/opt/tx-check\"] }", "health = { exec = [] }")]),
            &[r#"bad.toml:50:10: servers[1].services[0].health: exec health check must name a program"#],
        ),
        (
            "periods as a string",
            edit(&[("health_check_periods_until_fencing = 3", "health_check_periods_until_fencing = \"x\"")]),
            &[
                r#"bad.toml:34:38: servers[0].health_check_periods_until_fencing: expected a whole number of periods, at least 2 (3 is the default), got the string "x""#,
            ],
        ),
        (
            "periods negative",
            edit(&[("health_check_periods_until_fencing = 3", "health_check_periods_until_fencing = -1")]),
            &[
                r#"bad.toml:34:38: servers[0].health_check_periods_until_fencing: expected a whole number of periods, at least 2 (3 is the default), got the number -1"#,
            ],
        ),
        (
            "periods a fraction",
            edit(&[("health_check_periods_until_fencing = 3", "health_check_periods_until_fencing = 2.5")]),
            &[
                r#"bad.toml:34:38: servers[0].health_check_periods_until_fencing: expected a whole number of periods, at least 2 (3 is the default), got the number 2.5"#,
            ],
        ),
        (
            "periods 1",
            edit(&[("health_check_periods_until_fencing = 3", "health_check_periods_until_fencing = 1")]),
            &[
                r#"bad.toml:34:38: servers[0].health_check_periods_until_fencing: must be at least 2, so the lease outlives one renewal interval (3, the default, also survives one lost renewal)"#,
            ],
        ),
        (
            "an interval in an unknown unit",
            edit(&[("health_check_interval = \"10s\"", "health_check_interval = \"10 parsecs\"")]),
            &[
                r#"bad.toml:33:25: servers[0].health_check_interval: invalid duration "10 parsecs" (unknown time unit "parsecs", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)): write a number and a unit, like "500ms" or "10s""#,
            ],
        ),
        (
            "an interval of zero",
            edit(&[("health_check_interval = \"10s\"", "health_check_interval = \"0s\"")]),
            &[r#"bad.toml:33:25: servers[0].health_check_interval: must be greater than zero"#],
        ),
        (
            "an interval without quotes",
            edit(&[("health_check_interval = \"10s\"", "health_check_interval = 10")]),
            &[
                r#"bad.toml:33:25: servers[0].health_check_interval: expected a duration in quotes, like "500ms" or "10s", got the number 10"#,
            ],
        ),
        (
            "a negative grace period",
            edit(&[("fencing_grace_period = \"30s\"", "fencing_grace_period = -3")]),
            &[
                r#"bad.toml:22:24: clusters[0].fencing_grace_period: expected a duration in quotes, like "500ms" or "10s", got the number -3"#,
            ],
        ),
        (
            "negative migration attempts",
            edit(&[("fencing_grace_period = \"30s\"", "additional_auto_migration_attempts = -3")]),
            &[
                r#"bad.toml:22:38: clusters[0].additional_auto_migration_attempts: expected a whole number from 0 to 4294967295, got the number -3"#,
            ],
        ),
        (
            "auto_migration as a string",
            edit(&[("machine = \"m2\"\n", "machine = \"m2\"\nauto_migration = \"yes\"\n")]),
            &[r#"bad.toml:45:18: servers[1].auto_migration: expected true or false, got the string "yes""#],
        ),
        (
            "an unknown key at the top",
            edit(&[("name = \"d\"\n", "name = \"d\"\nbogus = 1\n")]),
            &[
                r#"bad.toml:2:1: bogus: unknown key: the keys allowed here are name, admin, leasing, machines, witnesses, clusters, servers"#,
            ],
        ),
        (
            "an unknown key in a server",
            edit(&[("machine = \"m1\"\n", "machine = \"m1\"\nfloating = \"198.18.1.9\"\n")]),
            &[
                r#"bad.toml:31:1: servers[0].floating: unknown key: the keys allowed here are name, cluster, machine, auto_migration, floating_ip, candidate_machines, health_check_interval, health_check_periods_until_fencing, shutdown_timeout, services"#,
            ],
        ),
        (
            "an unknown key in [admin]",
            edit(&[("listen = \"127.0.0.1:7001\"", "listen = \"127.0.0.1:7001\"\nport = 7001")]),
            &[r#"bad.toml:5:1: admin.port: unknown key: the only key allowed here is listen"#],
        ),
        (
            "an unknown key in an inline table",
            edit(&[(
                "netmask = \"255.255.255.0\"",
                "netmask = \"255.255.255.0\"\nhooks = { ifconfig = \"/x\", mout = \"/y\" }",
            )]),
            &[
                r#"bad.toml:14:28: machines[0].hooks.mout: unknown key: the keys allowed here are ifconfig, mount, timeout"#,
            ],
        ),
        (
            "a missing domain name",
            edit(&[("name = \"d\"\n", "")]),
            &[r#"bad.toml:1:1: name: required key is missing: add it at the top level of the file"#],
        ),
        (
            "a missing data source",
            edit(&[("data_source = \"sqlite://leases.db\"\n", "")]),
            &[
                r#"bad.toml:6:2: leasing.data_source: database leasing needs a data source: add data_source = "sqlite://PATH" or "postgres://USER@HOST:PORT/DB" to [leasing] (or use basis = "consensus")"#,
            ],
        ),
        (
            "a missing [leasing]",
            edit(&[("[leasing]\nbasis = \"database\"\ndata_source = \"sqlite://leases.db\"\n", "")]),
            &[r#"bad.toml:1:1: leasing: required key is missing: add it at the top level of the file"#],
        ),
        (
            "a machine without its node manager",
            edit(&[("node_manager = \"127.0.0.1:5556\"\n", "")]),
            &[r#"bad.toml:10:1: machines[0].node_manager: required key is missing: add it to this table"#],
        ),
        (
            "a server without its cluster",
            edit(&[("cluster = \"c2\"\n", "")]),
            &[r#"bad.toml:41:1: servers[1].cluster: required key is missing: add it to this table"#],
        ),
        (
            "a service without a command",
            edit(&[("command = [\"/opt/tx\"]\n", "")]),
            &[r#"bad.toml:47:1: servers[1].services[0].command: required key is missing: add it to this table"#],
        ),
        (
            "an empty domain name",
            edit(&[("name = \"d\"", "name = \" \"")]),
            &[r#"bad.toml:1:8: name: must not be empty"#],
        ),
        (
            "two servers of one name",
            edit(&[("name = \"ms2\"", "name = \"ms1\"")]),
            &[r#"bad.toml:42:8: servers[1].name: server "ms1" is defined twice"#],
        ),
        (
            "two machines at one address",
            edit(&[("node_manager = \"127.0.0.1:5557\"", "node_manager = \"127.0.0.1:5556\"")]),
            &[r#"bad.toml:17:16: machines[1].node_manager: address 127.0.0.1:5556 is already used by machine m1"#],
        ),
        (
            "a node manager on the admin's address",
            edit(&[("node_manager = \"127.0.0.1:5557\"", "node_manager = \"127.0.0.1:7001\"")]),
            &[r#"bad.toml:17:16: machines[1].node_manager: address 127.0.0.1:7001 is the Administration Server's"#],
        ),
        (
            "an unknown machine among a server's candidates",
            edit(&[("candidate_machines = [\"m2\"]", "candidate_machines = [\"m2\", \"m9\"]")]),
            &[
                r#"bad.toml:32:29: servers[0].candidate_machines[1]: unknown machine "m9": define it under [[machines]]"#,
            ],
        ),
        (
            "an unknown machine among a cluster's candidates",
            edit(&[("migration_candidates = [\"m1\", \"m2\"]", "migration_candidates = [\"m1\", \"m3\"]")]),
            &[
                r#"bad.toml:21:31: clusters[0].migration_candidates[1]: unknown machine "m3": define it under [[machines]]"#,
            ],
        ),
        (
            "an unknown cluster",
            edit(&[("cluster = \"c2\"", "cluster = \"c3\"")]),
            &[r#"bad.toml:43:11: servers[1].cluster: unknown cluster "c3": define it under [[clusters]]"#],
        ),
        (
            "a server with no candidates at either level",
            edit(&[("candidate_machines = [\"m1\"]\n", "")]),
            &[
                r#"bad.toml:41:1: servers[1].candidate_machines: a migratable server needs at least one candidate machine: set candidate_machines here or migration_candidates on its cluster"#,
            ],
        ),
        (
            "a server name with a space",
            edit(&[("name = \"ms1\"", "name = \"ms 1\"")]),
            &[
                r#"bad.toml:28:8: servers[0].name: invalid server name "ms 1": may hold only letters, digits, '-', '_' and '.'"#,
            ],
        ),
        (
            "a bad machine name among candidates",
            edit(&[("candidate_machines = [\"m2\"]", "candidate_machines = [\"m2\", \"-x\"]")]),
            &[
                r#"bad.toml:32:29: servers[0].candidate_machines[1]: invalid machine name "-x": must start with a letter or digit"#,
            ],
        ),
        (
            "two floating IPs alike",
            edit(&[("machine = \"m2\"\n", "machine = \"m2\"\nfloating_ip = \"198.18.1.101\"\n")]),
            &[r#"bad.toml:45:15: servers[1].floating_ip: 198.18.1.101 is already the floating IP of server ms1"#],
        ),
        (
            "a loopback floating IP",
            edit(&[("floating_ip = \"198.18.1.101\"", "floating_ip = \"127.0.0.2\"")]),
            &[r#"bad.toml:31:15: servers[0].floating_ip: 127.0.0.2 cannot be a floating IP"#],
        ),
        (
            "an empty command",
            edit(&[("command = [\"/opt/tx\"]", "command = []")]),
            &[
                r#"bad.toml:49:11: servers[1].services[0].command: must name a program: command = ["/path/to/program", "arg"]"#,
            ],
        ),
        (
            "a command as a string",
            edit(&[("command = [\"/opt/tx\"]", "command = \"/opt/tx\"")]),
            &[r#"bad.toml:49:11: servers[1].services[0].command: expected an array, got the string "/opt/tx""#],
        ),
        (
            "a command of numbers",
            edit(&[("command = [\"/opt/tx\"]", "command = [1]")]),
            &[r#"bad.toml:49:12: servers[1].services[0].command[0]: expected a string in quotes, got the number 1"#],
        ),
        (
            "two services of one name",
            edit(&[(
                "health = { exec = [\"/opt/tx-check\"] }",
                "health = { exec = [\"/opt/tx-check\"] }\n\n[[servers.services]]\nname = \"tx\"\ncommand = [\"/b\"]",
            )]),
            &[
                r#"bad.toml:53:8: servers[1].services[1].name: service names must be non-empty and unique within a server (got "tx")"#,
            ],
        ),
        (
            "two machines of one name",
            edit(&[("name = \"m2\"", "name = \"m1\"")]),
            &[
                r#"bad.toml:16:8: machines[1].name: machine "m1" is defined twice"#,
                r#"bad.toml:21:31: clusters[0].migration_candidates[1]: unknown machine "m2": define it under [[machines]]"#,
                r#"bad.toml:32:23: servers[0].candidate_machines[0]: unknown machine "m2": define it under [[machines]]"#,
                r#"bad.toml:44:11: servers[1].machine: unknown machine "m2": define it under [[machines]]"#,
            ],
        ),
        (
            "an unsupported data source",
            edit(&[("data_source = \"sqlite://leases.db\"", "data_source = \"mysql://u:pw@db/x\"")]),
            &[
                r#"bad.toml:8:15: leasing.data_source: unsupported data source "mysql://u:***@db/x": use sqlite://PATH or postgres://USER@HOST:PORT/DB"#,
            ],
        ),
        (
            "consensus leasing with a data source",
            edit(&[("basis = \"database\"", "basis = \"consensus\"")]),
            &[
                r#"bad.toml:8:15: leasing.data_source: consensus leasing keeps the lease table among the Node Managers, not in a database: remove data_source, or use basis = "database""#,
            ],
        ),
        (
            "consensus leasing with a lease too short for a change of leader",
            edit(&[
                ("basis = \"database\"", "basis = \"consensus\""),
                ("data_source = \"sqlite://leases.db\"\n", ""),
                ("health_check_interval = \"10s\"", "health_check_interval = \"30ms\""),
            ]),
            &[
                r#"bad.toml:32:25: servers[0].health_check_interval: with consensus leasing a new cluster leader answers up to 88 ms after the old one dies even at the fastest heartbeat (5 ms), but this server's lease of 90 ms leaves only 60 ms after a missed renewal: make the lease at least 134 ms (raise health_check_interval or health_check_periods_until_fencing)"#,
            ],
        ),
        (
            "a witness under database leasing",
            edit(&[("[[clusters]]", "[[witnesses]]\nname = \"w\"\nlisten = \"127.0.0.1:5558\"\n\n[[clusters]]")]),
            &[
                r#"bad.toml:19:1: witnesses: a witness is a voter of consensus leasing; database leasing has no voters: remove [[witnesses]], or use basis = "consensus""#,
            ],
        ),
        (
            "a witness named like a machine, on a machine's address, and a server placed on a witness",
            edit(&[
                ("basis = \"database\"", "basis = \"consensus\""),
                ("data_source = \"sqlite://leases.db\"\n", ""),
                (
                    "[[clusters]]",
                    "[[witnesses]]\nname = \"m2\"\nlisten = \"127.0.0.1:5556\"\n\n[[witnesses]]\nname = \"w\"\nlisten = \"127.0.0.1:5559\"\n\n[[clusters]]",
                ),
                ("candidate_machines = [\"m2\"]", "candidate_machines = [\"w\"]"),
            ]),
            &[
                r#"bad.toml:19:8: witnesses[0].name: "m2" is already the name of a machine or witness: voters need names of their own"#,
                r#"bad.toml:20:10: witnesses[0].listen: address 127.0.0.1:5556 is already used by m1"#,
                r#"bad.toml:39:23: servers[0].candidate_machines[0]: "w" is a witness: it votes but hosts no servers; name a machine under [[machines]]"#,
            ],
        ),
        (
            "an unknown leasing basis",
            edit(&[("basis = \"database\"", "basis = \"raft\"")]),
            &[r#"bad.toml:7:9: leasing.basis: "raft" is not allowed here: use one of database, consensus"#],
        ),
        (
            "a leasing basis of the wrong type",
            edit(&[("basis = \"database\"", "basis = 3")]),
            &[r#"bad.toml:7:9: leasing.basis: expected one of database, consensus, got the number 3"#],
        ),
        (
            "an unclosed string",
            edit(&[("data_source = \"sqlite://leases.db\"", "data_source = \"sqlite://leases.db")]),
            &[
                r#"bad.toml:8:34: leasing.data_source: invalid basic string: a string ends with `"` on the same line and holds no control characters"#,
            ],
        ),
        (
            "an unclosed array",
            edit(&[("candidate_machines = [\"m2\"]", "candidate_machines = [\"m2\",\n  \"m1\" \"m3\"]")]),
            &[r#"bad.toml:33:8: servers[0].candidate_machines: invalid array: expected `]`"#],
        ),
        (
            "a key with a space",
            edit(&[("candidate_machines = [\"m2\"]", "candidate machines = [\"m2\"]")]),
            &[
                r#"bad.toml:32:11: servers[0]: expected `.`, `=`: a key is followed by `=` (quote a key that holds spaces)"#,
            ],
        ),
        (
            "an unclosed table header",
            edit(&[("[[clusters]]\nname = \"c2\"", "[[clusters]\nname = \"c2\"")]),
            &[r#"bad.toml:24:11: clusters: invalid table header: expected `.`, `]]`"#],
        ),
        (
            "a duplicate key",
            edit(&[("machine = \"m1\"\n", "machine = \"m1\"\nmachine = \"m2\"\n")]),
            &[
                r#"bad.toml:31:1: servers[0].machine: duplicate key `machine` in table `servers`: each key may be set once, remove one of them"#,
            ],
        ),
        (
            "a table set twice, as a value and as tables",
            edit(&[("name = \"d\"\n", "name = \"d\"\nservers = 3\n")]),
            &[
                r#"bad.toml:28:1: servers: duplicate key `servers` in document root: each key may be set once, remove one of them"#,
            ],
        ),
        (
            "servers = 3",
            without_servers("servers = 3\n"),
            &[r#"bad.toml:2:11: servers: expected an array, got the number 3"#],
        ),
        (
            "servers as one table",
            without_servers("").replace(
                "[[clusters]]\nname = \"c2\"\n",
                "[[clusters]]\nname = \"c2\"\n\n[servers]\nname = \"ms1\"\ncluster = \"c1\"\nmachine = \"m1\"\n",
            ),
            &[r#"bad.toml:27:1: servers: expected an array, got a table: write [[servers]] above each entry"#],
        ),
        (
            "a domain name that is a number",
            edit(&[("name = \"d\"", "name = 5")]),
            &[r#"bad.toml:1:8: name: expected a string in quotes, got the number 5"#],
        ),
        (
            "a value cut off after =",
            edit(&[("name = \"d\"", "name =")]),
            &[
                r#"bad.toml:1:7: name: invalid string: expected `"`, `'`: a value must follow `=`, and a string needs quotes, like "text""#,
            ],
        ),
        (
            "an interface name with a slash",
            edit(&[("netmask = \"255.255.255.0\"", "interface = \"eth0/1\"")]),
            &[r#"bad.toml:13:13: machines[0].interface: "eth0/1" is not an interface name"#],
        ),
        (
            "a bad hook timeout",
            edit(&[("netmask = \"255.255.255.0\"", "hooks = { timeout = \"soon\" }")]),
            &[
                r#"bad.toml:13:21: machines[0].hooks.timeout: invalid duration "soon" (expected number at 0): write a number and a unit, like "500ms" or "10s""#,
            ],
        ),
    ];
    assert!(cases.len() >= 25, "the table covers at least 25 broken files");
    let mut wrong = Vec::new();
    for (what, text, want) in &cases {
        let got = report(text);
        if got.lines().collect::<Vec<_>>() != *want {
            wrong.push(format!("{what}:\n want {}\n  got {got}", want.join("\n      ")));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases differ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

/// Consensus leasing's voters are the machines' Node Managers, then the witnesses; an even
/// number of them is valid but warned of (two lose everything with either; more lose
/// everything on an even split).
#[test]
fn witnesses_vote_host_nothing_and_an_even_number_of_voters_is_warned_of() {
    let consensus = |witnesses: &str| {
        let text = edit(&[
            ("basis = \"database\"", "basis = \"consensus\""),
            ("data_source = \"sqlite://leases.db\"\n", ""),
            ("[[clusters]]", &format!("{witnesses}[[clusters]]")),
        ]);
        Domain::parse("d.toml", &text).unwrap_or_else(|e| panic!("{e}"))
    };
    let two = consensus("");
    assert_eq!(two.voters().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
    let warnings = two.leasing_warnings();
    assert!(warnings.iter().any(|w| w.contains("two voters") && w.contains("ferry witness")), "{warnings:?}");
    // Leases of 30 s (10 s x 3): the voters run at their defaults.
    assert!(!warnings.iter().any(|w| w.contains("heartbeats")), "{warnings:?}");
    let three = consensus("[[witnesses]]\nname = \"w\"\nlisten = \"127.0.0.1:5558\"\n\n");
    assert_eq!(three.voters().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["m1", "m2", "w"]);
    assert_eq!(three.leasing_warnings(), Vec::<String>::new());
    let w = ferry_core::MachineName::new("w").unwrap();
    assert!(three.enrolls(&w) && three.machine(&w).is_none(), "a witness enrolls but is no machine");
    let four = consensus(
        "[[witnesses]]\nname = \"w\"\nlisten = \"127.0.0.1:5558\"\n\n[[witnesses]]\nname = \"x\"\nlisten = \"127.0.0.1:5559\"\n\n",
    );
    assert!(four.leasing_warnings().iter().any(|w| w.contains("even split (2 against 2)")));
    assert!(Domain::parse("d.toml", BASE).unwrap().leasing_warnings().is_empty(), "database leasing has no voters");
    // Short leases: faster voters, and the warning says which leases avoid it.
    let text = edit(&[
        ("basis = \"database\"", "basis = \"consensus\""),
        ("data_source = \"sqlite://leases.db\"\n", ""),
        ("[[clusters]]", "[[witnesses]]\nname = \"w\"\nlisten = \"127.0.0.1:5558\"\n\n[[clusters]]"),
        ("health_check_interval = \"10s\"", "health_check_interval = \"200ms\""),
    ]);
    let fast = Domain::parse("d.toml", &text).unwrap();
    let warnings = fast.leasing_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("19 ms heartbeats and elections after 57–114 ms"), "{warnings:?}");
}
