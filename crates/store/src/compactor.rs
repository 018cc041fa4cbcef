use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::types::Revision;
use crate::{Error, Store};

/// When history is discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionConfig {
    /// How often the compactor runs. Each run compacts to the revision the
    /// previous run saw, so at least this much history is kept (Kubernetes'
    /// API server uses 5 minutes).
    pub interval: Duration,
    /// Never compact away the newest this-many revisions.
    pub keep_revisions: i64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            interval: Duration::from_secs(300),
            keep_revisions: 1000,
        }
    }
}

impl CompactionConfig {
    /// The revision to compact to, given the current revision and the one
    /// seen by the previous run; `None` when nothing may be discarded.
    pub fn target(&self, current: Revision, previous_run: Option<Revision>) -> Option<Revision> {
        let previous = previous_run?;
        let target = previous.min(current - self.keep_revisions);
        (target > 0).then_some(target)
    }
}

/// A background task that compacts a store periodically. Dropping the handle
/// stops it.
pub struct Compactor {
    task: JoinHandle<()>,
}

impl Compactor {
    pub fn spawn(store: Arc<dyn Store>, config: CompactionConfig) -> Compactor {
        let task = tokio::spawn(async move {
            let mut previous: Option<Revision> = None;
            let mut last_target: Revision = 0;
            let mut ticker = tokio::time::interval(config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let current = match store.current_revision().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "compactor: reading the current revision failed");
                        continue;
                    }
                };
                if let Some(target) = config.target(current, previous)
                    && target > last_target
                {
                    match store.compact(target).await {
                        Ok(()) | Err(Error::Compacted { .. }) => {
                            tracing::debug!(target, "compacted store history");
                            last_target = target;
                        }
                        Err(e) => tracing::warn!(error = %e, target, "compaction failed"),
                    }
                }
                previous = Some(current);
            }
        });
        Compactor { task }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_target_keeps_one_interval_and_the_newest_revisions() {
        let config = CompactionConfig {
            interval: Duration::from_secs(1),
            keep_revisions: 100,
        };
        let cases = [
            ("first run only records", 5000, None, None),
            ("compacts to previous run", 5000, Some(3000), Some(3000)),
            ("keeps newest revisions", 5000, Some(4950), Some(4900)),
            ("nothing to discard on a young store", 50, Some(40), None),
        ];
        for (name, current, previous, want) in cases {
            assert_eq!(config.target(current, previous), want, "{name}");
        }
    }
}
