//! The working set used to size the provisioned cache.
//!
//! The working set over a horizon `W` at time `t` is the total size of the distinct objects
//! accessed in `(t - W, t]`. Its peak over the trace is what a cache must hold so that every
//! re-access within `W` of the previous one hits under LRU (an object is evicted only after more
//! than the capacity's worth of other distinct objects were accessed since its last use). With
//! `W` = the sliding window's horizon (18 x 10 min) the provisioned cache keeps at least what
//! the window keeps, which is how the papers sized their ElastiCache clusters to the workload.

use std::collections::VecDeque;

use super::Trace;
use crate::types::Millis;

/// Peak working set over `horizon_ms`: `(bytes, time of the peak in ms)`.
pub fn peak_working_set(trace: &Trace, horizon_ms: Millis) -> (u64, Millis) {
    let mut last: Vec<Option<Millis>> = vec![None; trace.objects()];
    let mut window: VecDeque<(Millis, u32)> = VecDeque::new();
    let mut bytes = 0u64;
    let mut peak = (0u64, 0);
    for r in &trace.requests {
        while let Some(&(t, o)) = window.front() {
            if t + horizon_ms > r.t_ms {
                break;
            }
            window.pop_front();
            if last[o as usize] == Some(t) {
                last[o as usize] = None;
                bytes -= trace.sizes[o as usize];
            }
        }
        let o = r.object as usize;
        if last[o].is_none() {
            bytes += trace.sizes[o];
        }
        last[o] = Some(r.t_ms);
        window.push_back((r.t_ms, r.object));
        if bytes > peak.0 {
            peak = (bytes, r.t_ms);
        }
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Request;

    #[test]
    fn peak_counts_distinct_objects_in_the_horizon() {
        let trace = Trace {
            requests: [(0, 0), (10, 1), (20, 0), (200, 2), (210, 1)]
                .iter()
                .map(|&(t_ms, object)| Request { t_ms, object })
                .collect(),
            keys: vec!["a".into(), "b".into(), "c".into()],
            sizes: vec![100, 10, 1],
            duration_ms: 300,
            start_hour_utc: 0,
        };
        // Horizon 100 ms: {a, b} at t=20 is the peak (110); at t=210 only {c, b} (11).
        assert_eq!(peak_working_set(&trace, 100), (110, 10));
        // Horizon 1 s: everything (111) once c arrives.
        assert_eq!(peak_working_set(&trace, 1000), (111, 200));
    }
}
