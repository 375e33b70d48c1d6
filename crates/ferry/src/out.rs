//! Printing for every command: `outln!`/`out!` to stdout, `errln!` to stderr, in place of
//! `println!` and friends, which panic when the other end of a pipe is gone (`ferry events
//! -o json | head -c 100`: "failed printing to stdout: Broken pipe").
//!
//! Why a writer and not the usual Unix answer (SIGPIPE back to its default, so the process
//! dies quietly): the daemons are this same binary, and a Node Manager writing to a server's
//! closed stdin, or any process writing to a closed socket, must get an error, not be
//! killed; and resetting a signal disposition takes `unsafe` code, which only `ferry-host`
//! may have. So stdout treats a closed pipe as the reader's "enough": the command exits at
//! once with status 0, as its output was wanted no further. A closed stderr is ignored
//! (there is nowhere left to say anything). `#![deny(clippy::print_stdout, ...)]` in
//! `lib.rs` keeps the std macros out of this crate.

use std::io::Write;

/// Writes to stdout; a reader that went away ends the process quietly (exit 0), any other
/// failure to write ends it with [`crate::args::EXIT_FAILED`].
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        stderr(format_args!("ferry: cannot write to standard output: {e}\n"));
        std::process::exit(crate::args::EXIT_FAILED);
    }
}

/// Writes to stderr, ignoring a closed one.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// `println!` that ends the command quietly when stdout's reader is gone.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that ends the command quietly when stdout's reader is gone.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}
