//! Warm-up schedule: one due time per function, earliest first.

use std::collections::BTreeSet;

use crate::types::{FunctionId, Millis};

#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    queue: BTreeSet<(Millis, u32)>,
    due: Vec<Option<Millis>>,
}

impl Schedule {
    pub fn new(functions: u32) -> Self {
        Schedule {
            queue: BTreeSet::new(),
            due: vec![None; functions as usize],
        }
    }

    /// Sets (or moves) `f`'s next warm-up to `at`.
    pub fn set(&mut self, f: FunctionId, at: Millis) {
        self.clear(f);
        self.due[f.index()] = Some(at);
        self.queue.insert((at, f.0));
    }

    /// Removes `f` from the schedule.
    pub fn clear(&mut self, f: FunctionId) {
        if let Some(old) = self.due[f.index()].take() {
            self.queue.remove(&(old, f.0));
        }
    }

    /// Takes the earliest warm-up due at or before `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, FunctionId)> {
        let &(at, f) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.pop_first();
        self.due[f as usize] = None;
        Some((at, FunctionId(f)))
    }

    /// The earliest due time.
    pub fn first(&self) -> Option<Millis> {
        self.queue.first().map(|&(at, _)| at)
    }
}
