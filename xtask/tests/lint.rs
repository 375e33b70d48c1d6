//! The lint gate on the real workspace, run by `cargo test --workspace` (so locally and in
//! CI alike): every Rust file has its `//!` header, and ferry-core's normal dependencies do
//! no I/O. Each failure lists every problem found, with how to fix it.

use xtask::{cargo_metadata, io_dependencies, missing_headers, workspace_root, CORE, HEADER_DIRS};

#[test]
fn every_rust_file_opens_with_a_doc_header() {
    let root = workspace_root();
    let (files, problems) = missing_headers(&root).unwrap_or_else(|e| panic!("{e}"));
    // A walk that found nothing would pass without checking anything.
    assert!(files > 0, "no .rs file under {HEADER_DIRS:?} of {}", root.display());
    assert!(
        problems.is_empty(),
        "{} of {files} Rust files lack their `//!` header:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn ferry_core_stays_sans_io() {
    let metadata = cargo_metadata(&workspace_root()).unwrap_or_else(|e| panic!("{e}"));
    let problems = io_dependencies(&metadata, CORE).unwrap_or_else(|e| panic!("{e}"));
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
