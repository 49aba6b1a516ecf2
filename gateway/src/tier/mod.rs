//! The serverless-memory write-back tier: erasure-coded chunks in function memory, a local
//! journal of acknowledged writes, and persistence to the bucket.

pub mod ec;
pub mod journal;
pub mod meta;
