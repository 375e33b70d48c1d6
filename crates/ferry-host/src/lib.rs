//! ferry-host
