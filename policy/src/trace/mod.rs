//! Request traces: the in-memory form the simulator replays, statistics, the synthetic
//! generator and the working-set measure used to size the provisioned cache. Pure: reading
//! files is [`crate::io`]'s job.

pub mod stats;
pub mod synth;
pub mod working_set;

use std::collections::HashMap;

use crate::types::Millis;

/// One request: object `object` accessed at `t_ms` (ms since the trace start).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Time since the trace start, ms.
    pub t_ms: Millis,
    /// Object index into [`Trace::keys`] / [`Trace::sizes`].
    pub object: u32,
}

/// A replayable trace. Replay convention (InfiniStore's replayer): an object's first access is
/// a PUT (the miss is filled), later accesses are GETs, a GET miss re-fills.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Requests sorted by time.
    pub requests: Vec<Request>,
    /// Object keys.
    pub keys: Vec<String>,
    /// Object sizes, bytes.
    pub sizes: Vec<u64>,
    /// Length of the trace, ms (>= the last request).
    pub duration_ms: Millis,
    /// UTC hour of day at `t_ms = 0` (for hour-of-day statistics).
    pub start_hour_utc: u32,
}

impl Trace {
    /// Builds a trace from raw `(unix ms, key, bytes)` records in any order. Time 0 is the
    /// first record's time truncated to the hour; the duration runs to the end of the minute of
    /// the last record. An object's size is the largest `bytes` seen for it (partial reads
    /// write less).
    pub fn from_records(mut records: Vec<(i64, String, u64)>) -> Trace {
        records.sort_by_key(|r| r.0);
        let Some(first) = records.first().map(|r| r.0) else {
            return Trace {
                requests: Vec::new(),
                keys: Vec::new(),
                sizes: Vec::new(),
                duration_ms: 0,
                start_hour_utc: 0,
            };
        };
        let hour = 3_600_000i64;
        let start = first.div_euclid(hour) * hour;
        let start_hour_utc = (start.div_euclid(hour).rem_euclid(24)) as u32;
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut keys = Vec::new();
        let mut sizes: Vec<u64> = Vec::new();
        let mut requests = Vec::with_capacity(records.len());
        for (t, key, bytes) in records {
            let next = keys.len() as u32;
            let id = *index.entry(key.clone()).or_insert_with(|| {
                keys.push(key);
                sizes.push(0);
                next
            });
            sizes[id as usize] = sizes[id as usize].max(bytes);
            requests.push(Request {
                t_ms: (t - start) as Millis,
                object: id,
            });
        }
        let last = requests.last().map_or(0, |r| r.t_ms);
        let duration_ms = (last / 60_000 + 1) * 60_000;
        Trace {
            requests,
            keys,
            sizes,
            duration_ms,
            start_hour_utc,
        }
    }

    /// Number of distinct objects.
    pub fn objects(&self) -> usize {
        self.keys.len()
    }
}

/// Parses `2017-06-20 00:00:26.626` (UTC; fraction optional, `T` also accepted) into Unix ms.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let time = time.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next()?.parse().ok()?;
    let mut ms = 0i64;
    for (i, c) in frac.chars().take(3).enumerate() {
        ms += i64::from(c.to_digit(10)?) * [100, 10, 1][i];
    }
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// Interpolates a quantile table `(q, value)` log-linearly at `u` in `[0, 1]`.
pub fn quantile_log_linear(table: &[(f64, f64)], u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    for w in table.windows(2) {
        let ((q0, v0), (q1, v1)) = (w[0], w[1]);
        if u <= q1 {
            let f = if q1 > q0 { (u - q0) / (q1 - q0) } else { 0.0 };
            return (v0.ln() + f * (v1.ln() - v0.ln())).exp();
        }
    }
    table.last().map_or(0.0, |&(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trace_timestamps() {
        // 2017-06-20 00:00:00 UTC = 1497916800 s.
        assert_eq!(
            parse_timestamp("2017-06-20 00:00:00"),
            Some(1_497_916_800_000)
        );
        assert_eq!(
            parse_timestamp("2017-06-20 00:00:26.626"),
            Some(1_497_916_826_626)
        );
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.5Z"), Some(500));
        assert_eq!(parse_timestamp("garbage"), None);
    }

    #[test]
    fn builds_trace_from_unsorted_records() {
        let base = 1_497_916_800_000i64 + 3_600_000; // 01:00 UTC
        let t = Trace::from_records(vec![
            (base + 5_000, "b".into(), 20),
            (base + 1_000, "a".into(), 10),
            (base + 9_000, "a".into(), 8), // partial read: size stays 10
        ]);
        assert_eq!(t.keys, vec!["a", "b"]);
        assert_eq!(t.sizes, vec![10, 20]);
        assert_eq!(
            t.requests
                .iter()
                .map(|r| (r.t_ms, r.object))
                .collect::<Vec<_>>(),
            vec![(1_000, 0), (5_000, 1), (9_000, 0)]
        );
        assert_eq!(t.duration_ms, 60_000);
        assert_eq!(t.start_hour_utc, 1);
    }

    #[test]
    fn log_linear_quantiles() {
        let table = [(0.0, 10.0), (0.5, 100.0), (1.0, 1000.0)];
        assert!((quantile_log_linear(&table, 0.25) - 31.622_776).abs() < 1e-4);
        assert!((quantile_log_linear(&table, 1.0) - 1000.0).abs() < 1e-9);
        assert!((quantile_log_linear(&table, 0.0) - 10.0).abs() < 1e-9);
    }
}
