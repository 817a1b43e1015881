//! Whether anything was written to the SQLite database since a moment, known
//! without asking it. Every write of the serving process goes through the
//! one writer connection (and `billd serve` holds the file's serving lock, so
//! no other serving process writes it): SQLite calls the writer's commit hook
//! before each commit becomes visible, and the connection is released to the
//! pool only after its commits are visible. So a mark taken while no commit is
//! pending, and still equal to the count of commit hooks later, proves that a
//! read made after taking it is still current.
//!
//! Other processes can still write the file beside `billd serve` (`billd
//! reconcile`, `billd events retry`); their commits are invisible here, so
//! a mark also expires after [`MAX_AGE`], bounding how long they go unseen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::usage::WriteMark;

/// How long a mark vouches for a read when nothing is committed here: at
/// most one re-read per customer per `MAX_AGE` under a steady read load.
pub(super) const MAX_AGE: Duration = Duration::from_secs(1);

/// Commits begun and commits known visible on the writer connection.
#[derive(Debug, Default)]
pub(super) struct WriteClock {
    /// Commit hooks called (bumped before the commit is visible).
    begun: AtomicU64,
    /// `begun` as of the writer's last release to the pool (every commit
    /// counted up to it is visible).
    settled: AtomicU64,
}

impl WriteClock {
    /// Called by the writer's commit hook, before the commit is visible.
    pub(super) fn committing(&self) {
        self.begun.fetch_add(1, Ordering::SeqCst);
    }

    /// Called when the writer connection is back in the pool: no commit of
    /// it is pending any more (there is one writer connection, so no other
    /// commit can start while this runs).
    pub(super) fn settled(&self) {
        self.settled
            .store(self.begun.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// A mark for a read about to start, unless a commit is pending (one
    /// that may or may not be visible to that read).
    pub(super) fn quiet(&self) -> Option<WriteMark> {
        let settled = self.settled.load(Ordering::SeqCst);
        let begun = self.begun.load(Ordering::SeqCst);
        (settled == begun).then(|| WriteMark {
            commits: begun,
            taken: Instant::now(),
        })
    }

    /// Whether no commit has begun since `mark` was taken, less than
    /// [`MAX_AGE`] ago.
    pub(super) fn still_quiet(&self, mark: WriteMark) -> bool {
        self.begun.load(Ordering::SeqCst) == mark.commits && mark.taken.elapsed() < MAX_AGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_pending_or_begun_since_the_mark_makes_it_stale() {
        let clock = WriteClock::default();
        let mark = clock.quiet().expect("nothing pending yet");
        assert!(clock.still_quiet(mark));
        clock.committing();
        assert!(!clock.still_quiet(mark));
        assert_eq!(clock.quiet(), None, "a commit is not yet known visible");
        clock.settled();
        let later = clock.quiet().expect("the commit settled");
        assert!(clock.still_quiet(later));
        assert!(!clock.still_quiet(mark));
        let old = WriteMark {
            taken: later.taken - MAX_AGE,
            ..later
        };
        assert!(!clock.still_quiet(old), "a mark expires");
    }
}
