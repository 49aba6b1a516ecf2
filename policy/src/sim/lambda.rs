//! Lambda billing model: invocations per function, billed per 1 ms of configured memory.
//!
//! A function is invoked when work arrives and it is not already running; it serves its work
//! serially and stays invoked for a short tail after the last piece of work (so back-to-back
//! requests share one invocation), then returns. A warm-up is an invocation of its own short
//! duration, unless the function is running anyway. An invocation never exceeds Lambda's
//! 15-minute limit: a longer busy stretch is billed as consecutive invocations.

use serde::{Deserialize, Serialize};

use crate::types::{FunctionId, Millis};

/// Lambda's maximum invocation length.
pub const MAX_INVOCATION_MS: Millis = 15 * 60 * 1000;

/// How long function work takes (ours: assumptions, see `docs/policy.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionModel {
    /// Bytes per second one function moves (to/from the gateway, or from S3). Default 40 MB/s:
    /// what one 512–1536 MB function reads from S3 (`serverless-memory.md` §6).
    pub bytes_per_sec: u64,
    /// Fixed time per chunk request (framing, CRC, lookup).
    pub request_overhead_ms: Millis,
    /// The function stays invoked this long after its last work.
    pub tail_ms: Millis,
    /// Billed duration of a warm-up invocation (invoke, dial back, ping, bye).
    pub warmup_ms: Millis,
}

impl Default for FunctionModel {
    fn default() -> Self {
        FunctionModel {
            bytes_per_sec: 40_000_000,
            request_overhead_ms: 2,
            tail_ms: 20,
            warmup_ms: 20,
        }
    }
}

impl FunctionModel {
    /// Time to serve one chunk request moving `bytes`.
    pub fn work_ms(&self, bytes: u64) -> Millis {
        self.request_overhead_ms + (bytes * 1000).div_ceil(self.bytes_per_sec.max(1))
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Inv {
    open: bool,
    start: Millis,
    busy_until: Millis,
    end: Millis,
}

/// Per-function invocation state and the bill so far.
#[derive(Clone, Debug)]
pub struct LambdaMeter {
    model: FunctionModel,
    memory_mb: u64,
    fns: Vec<Inv>,
    /// Invocations started.
    pub requests: u64,
    /// Billed ms x MB of closed invocations.
    pub mb_ms: u128,
    /// Warm-ups that were billed (not absorbed by a running invocation).
    pub warmups_billed: u64,
}

impl LambdaMeter {
    /// A meter for functions of `memory_mb`.
    pub fn new(model: FunctionModel, memory_mb: u32) -> Self {
        LambdaMeter {
            model,
            memory_mb: u64::from(memory_mb),
            fns: Vec::new(),
            requests: 0,
            mb_ms: 0,
            warmups_billed: 0,
        }
    }

    fn slot(&mut self, f: FunctionId) -> &mut Inv {
        if f.index() >= self.fns.len() {
            self.fns.resize(f.index() + 1, Inv::default());
        }
        &mut self.fns[f.index()]
    }

    fn bill(&mut self, ms: Millis) {
        self.mb_ms += u128::from(ms.max(1)) * u128::from(self.memory_mb);
    }

    /// `f` does `work` ms of work arriving at `t`.
    pub fn work(&mut self, f: FunctionId, t: Millis, work: Millis) {
        let tail = self.model.tail_ms;
        let inv = *self.slot(f);
        let mut inv = if inv.open && t <= inv.end {
            inv
        } else {
            if inv.open {
                self.bill(inv.end - inv.start);
            }
            self.requests += 1;
            Inv {
                open: true,
                start: t,
                busy_until: t,
                end: t,
            }
        };
        inv.busy_until = inv.busy_until.max(t) + work;
        inv.end = inv.end.max(inv.busy_until + tail);
        // Split at Lambda's limit: bill a full invocation, continue in a new one.
        while inv.end - inv.start > MAX_INVOCATION_MS {
            self.bill(MAX_INVOCATION_MS);
            self.requests += 1;
            inv.start += MAX_INVOCATION_MS;
        }
        *self.slot(f) = inv;
    }

    /// Serves a chunk request of `bytes` on `f` at `t`.
    pub fn serve(&mut self, f: FunctionId, t: Millis, bytes: u64) {
        let w = self.model.work_ms(bytes);
        self.work(f, t, w);
    }

    /// A warm-up of `f` at `t` (free if `f` is running anyway).
    pub fn warmup(&mut self, f: FunctionId, t: Millis) {
        let inv = *self.slot(f);
        if inv.open && t <= inv.end {
            return;
        }
        if inv.open {
            self.bill(inv.end - inv.start);
        }
        self.requests += 1;
        self.warmups_billed += 1;
        let d = self.model.warmup_ms;
        *self.slot(f) = Inv {
            open: true,
            start: t,
            busy_until: t + d,
            end: t + d,
        };
    }

    /// `f`'s instance is gone (reclaimed or returned): bill what ran until `t`.
    pub fn stop(&mut self, f: FunctionId, t: Millis) {
        let inv = *self.slot(f);
        if inv.open {
            self.bill(inv.end.min(t.max(inv.start)) - inv.start);
            *self.slot(f) = Inv::default();
        }
    }

    /// Billed ms x MB including invocations still open (counted to their planned end).
    pub fn mb_ms_so_far(&self) -> u128 {
        self.mb_ms
            + self
                .fns
                .iter()
                .filter(|i| i.open)
                .map(|i| u128::from((i.end - i.start).max(1)) * u128::from(self.memory_mb))
                .sum::<u128>()
    }

    /// Closes every invocation (end of the simulation).
    pub fn finish(&mut self) {
        for i in 0..self.fns.len() {
            let inv = self.fns[i];
            if inv.open {
                self.bill(inv.end - inv.start);
                self.fns[i] = Inv::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> LambdaMeter {
        LambdaMeter::new(
            FunctionModel {
                bytes_per_sec: 1_000_000,
                request_overhead_ms: 2,
                tail_ms: 10,
                warmup_ms: 5,
            },
            1024,
        )
    }

    #[test]
    fn back_to_back_requests_share_an_invocation() {
        let mut m = meter();
        let f = FunctionId(0);
        m.serve(f, 0, 1_000_000); // 2 + 1000 ms of work: busy until 1002, ends 1012
        m.serve(f, 1005, 0); // within the tail: queued behind nothing, 2 ms, ends 1017
        m.finish();
        assert_eq!(m.requests, 1);
        assert_eq!(m.mb_ms, 1017 * 1024);
    }

    #[test]
    fn warmups_are_absorbed_by_running_invocations() {
        let mut m = meter();
        let f = FunctionId(3);
        m.warmup(f, 0); // 5 ms
        m.warmup(f, 3); // running: free
        m.warmup(f, 60_000); // new: 5 ms
        m.finish();
        assert_eq!((m.requests, m.warmups_billed), (2, 2));
        assert_eq!(m.mb_ms, 10 * 1024);
    }

    #[test]
    fn long_busy_stretches_split_at_fifteen_minutes() {
        let mut m = meter();
        m.work(FunctionId(0), 0, MAX_INVOCATION_MS + 1000); // + 10 ms tail
        m.finish();
        assert_eq!(m.requests, 2);
        assert_eq!(m.mb_ms, u128::from(MAX_INVOCATION_MS + 1010) * 1024);
    }
}
