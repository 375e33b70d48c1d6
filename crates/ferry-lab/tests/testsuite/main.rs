//! ferry-lab's one integration test binary (STYLE habit 11): the lab itself (`lab`: built and
//! removed without a trace, its faults cutting what they say) and the built-in floating-IP
//! action run inside lab machines (`ipaddr`). They need root and `ip` (some more tools);
//! without them they print why they did not run and pass, except under `CI=true`, where they
//! fail.

mod ipaddr;
mod lab;
