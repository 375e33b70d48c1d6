//! ferry-nodemanager
