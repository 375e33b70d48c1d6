//! The `ferry` binary: one executable for every role (DESIGN §4).

fn main() {
    ferry_tls::install_crypto_provider();
    std::process::exit(ferry::cli::main());
}
