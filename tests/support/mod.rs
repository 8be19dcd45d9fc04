//! What the integration tests share; every test binary declares `mod support;` and takes what it
//! needs:
//!
//! - [`sim`]: the simulator side — resource paths, bodies, scripted answers, simulators seeded
//!   for a test;
//! - [`client`]: the caller side — a fast policy, clients, reports and engine errors, PUTs;
//! - [`capture`]: tracing output captured in memory;
//! - [`servers`]: a real `redis-server` and Azurite of our own, on free loopback ports;
//! - [`child`]: tests that re-run their own binary as a child process;
//! - [`contract`]: what every cross-process lease store must do;
//! - [`hostile`]: bare loopback servers that redirect elsewhere or never answer.

// Each test binary uses only part of this module, and of what it re-exports.
#![allow(dead_code, unused_imports)]

pub mod capture;
pub mod child;
pub mod client;
pub mod contract;
pub mod hostile;
pub mod servers;
pub mod sim;

pub use capture::Captured;
pub use child::*;
pub use client::*;
pub use servers::*;
pub use sim::*;

/// A small, seeded xorshift, for tests that do things at random points; the seed is printed, so
/// a failure can be told apart from another.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock.
    pub fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("random seed: {seed}");
        Self(seed)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// An RFC 9110 `IMF-fixdate`, as `Retry-After` carries a date.
pub fn http_date(at: std::time::SystemTime) -> String {
    httpdate::fmt_http_date(at)
}
