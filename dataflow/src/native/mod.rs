//! The only code of the workspace that calls C directly, and so the only module allowed
//! `unsafe`; each block says why it is sound in a `// SAFETY:` comment. Both parts are here
//! for a measured gain that the safe wrappers cannot give:
//! - [`heap`]: one jemalloc setting at start (how soon freed pages go back to the system);
//! - `fetch`: librdkafka's batch consume, many messages of a partition per call instead of
//!   one.

pub(crate) mod fetch;
pub mod heap;
