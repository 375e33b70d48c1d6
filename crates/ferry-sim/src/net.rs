//! The simulated network between hosts (the machines and the lease store's host).
//!
//! Every message gets a random delay; during the fault phase a message may be lost, may be
//! delayed a long time (a TCP retransmission that still gets through), and links may be cut.
//! A cut is a set of directed host pairs, so partitions can be symmetric or one-way ("the
//! host reaches the store but not its peers", "requests arrive, answers do not"). A message
//! is judged when it is sent: one already in flight when a cut starts still arrives, which is
//! what a delayed segment on an established connection does. Messages between processes of
//! one host (a master and its own Node Manager) take at most a millisecond and are never cut.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::Rng;

#[derive(Debug, Clone, Default)]
pub struct Net {
    cuts: Vec<(u64, BTreeSet<(usize, usize)>)>,
    slow: Vec<(u64, usize, u64)>,
    /// Largest ordinary one-way delay.
    pub max_delay_ms: u64,
    /// Probability that a message between hosts is lost (fault phase only).
    pub loss: f64,
    /// Probability that a message is held up for a long time (fault phase only).
    pub long_p: f64,
    /// Range of those long delays.
    pub long_ms: (u64, u64),
}

impl Net {
    /// Cuts the directed links in `pairs` until [`Net::uncut`] with the same `id`.
    pub fn cut(&mut self, id: u64, pairs: BTreeSet<(usize, usize)>) {
        self.cuts.push((id, pairs));
    }

    pub fn uncut(&mut self, id: u64) {
        self.cuts.retain(|(i, _)| *i != id);
    }

    /// Delays every message to or from `host` by `extra_ms` more until [`Net::unslow`].
    pub fn slow(&mut self, id: u64, host: usize, extra_ms: u64) {
        self.slow.push((id, host, extra_ms));
    }

    pub fn unslow(&mut self, id: u64) {
        self.slow.retain(|(i, _, _)| *i != id);
    }

    /// Heals everything: no cuts, no slow links, no loss, no long delays.
    pub fn heal(&mut self) {
        self.cuts.clear();
        self.slow.clear();
        self.loss = 0.0;
        self.long_p = 0.0;
    }

    pub fn blocked(&self, from: usize, to: usize) -> bool {
        self.cuts.iter().any(|(_, pairs)| pairs.contains(&(from, to)))
    }

    /// The delay of one message from `from` to `to`, or `None` if it is lost.
    pub fn delay(&self, rng: &mut StdRng, from: usize, to: usize) -> Option<u64> {
        if from == to {
            return Some(rng.gen_range(0..=1));
        }
        if self.blocked(from, to) {
            return None;
        }
        if self.loss > 0.0 && rng.gen_bool(self.loss) {
            return None;
        }
        let mut d = rng.gen_range(1..=self.max_delay_ms.max(1));
        if self.long_p > 0.0 && rng.gen_bool(self.long_p) {
            d += rng.gen_range(self.long_ms.0..=self.long_ms.1.max(self.long_ms.0));
        }
        // A slow link adds its delay once per message, whichever end is slow.
        d += self.slow.iter().filter(|(_, h, _)| *h == from || *h == to).map(|(_, _, extra)| *extra).max().unwrap_or(0);
        Some(d)
    }
}
