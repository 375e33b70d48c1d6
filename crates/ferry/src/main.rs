//! The `ferry` binary: one executable for every role (DESIGN §4).

fn main() {
    std::process::exit(ferry::cli::main());
}
