//! The conformance suite (written by the store work).
