//! `ferry-lab-probe`: tiny stand-in services for lab tests, so the lab needs no `socat` or
//! `python` on the test machine.
//!
//! * `ferry-lab-probe listen ADDR:PORT [GREETING]`: accepts TCP connections forever and sends
//!   each `GREETING\n` (default: the listen address), then closes it. Tells a test which
//!   machine answered at an address.
//! * `ferry-lab-probe count FILE [INTERVAL_MS]`: writes 1, 2, 3, ... to FILE (atomically,
//!   via a rename) every INTERVAL_MS (default 5). Shows whether a process runs (freeze/thaw).
//!
//! Plain blocking std code: each probe is its own process, one thing at a time.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("listen") if args.len() >= 2 => listen(&args[1], args.get(2).cloned()),
        Some("count") if args.len() >= 2 => {
            count(PathBuf::from(&args[1]), args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5))
        }
        _ => Err("usage: ferry-lab-probe listen ADDR:PORT [GREETING] | count FILE [INTERVAL_MS]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-lab-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn listen(addr: &str, greeting: Option<String>) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let greeting = greeting.unwrap_or_else(|| addr.to_string());
    eprintln!("ferry-lab-probe: listening on {addr}");
    for stream in listener.incoming() {
        match stream {
            // A client that went away is not our problem; keep serving.
            Ok(mut stream) => {
                let _ = writeln!(stream, "{greeting}");
            }
            Err(e) => eprintln!("ferry-lab-probe: accept failed: {e}"),
        }
    }
    Ok(())
}

#[allow(clippy::disallowed_methods)] // reason: a standalone helper process; a blocking sleep is the point
fn count(file: PathBuf, interval_ms: u64) -> Result<(), String> {
    let tmp = file.with_extension("tmp");
    for i in 1u64.. {
        std::fs::write(&tmp, format!("{i}\n"))
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
    Ok(())
}
