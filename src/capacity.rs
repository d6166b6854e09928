//! Hash tables keep the capacity of their fullest moment. Once a burst of 5,000 requests was
//! deleted, the tables sized for it were megabytes of the operator's heap (heaptrack), spread
//! between pages the allocator could then not hand back. Whatever sweeps a table calls this.
//! And what is kept for every request takes no more room than it needs.

use std::{collections::HashMap, hash::Hash, num::NonZeroU64};

/// Shrinks `map` once it is three-quarters empty, leaving room to grow again.
pub fn release_spare_capacity<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    const SMALL: usize = 64;
    if map.capacity() > 4 * map.len().max(SMALL) {
        map.shrink_to(2 * map.len());
    }
}

/// A hash that fits where `Option` takes no room of its own: the request index keeps two for
/// every request. 0 counts as 1, one more collision among 2^64.
pub fn nonzero_hash(hash: u64) -> NonZeroU64 {
    NonZeroU64::new(hash).unwrap_or(NonZeroU64::MIN)
}
