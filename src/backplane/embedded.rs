//! The embedded single-node store: rooms keep their state in this process.
//!
//! What it guarantees: G3-G6 on one node, and epochs that grow across a room's lifetimes in
//! this process (a room disposed and created again gets a higher epoch, so a client holding
//! an old (epoch, seq) gets a snapshot, never a wrong delta). What it does not: anything
//! after the process exits. State lives in memory only; that is the single-node product.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Backplane, BackplaneError, Claim, CommitBatch};

/// In-process backplane. See the module docs.
#[derive(Debug, Default)]
pub struct EmbeddedBackplane {
    /// Highest epoch handed out per room id. Grows by one entry per distinct room id ever
    /// created on this node (a few dozen bytes each).
    epochs: Mutex<HashMap<String, u64>>,
}

impl EmbeddedBackplane {
    pub fn new() -> EmbeddedBackplane {
        EmbeddedBackplane::default()
    }
}

#[async_trait]
impl Backplane for EmbeddedBackplane {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn claim(&self, room: &str, _room_type: &str) -> Result<Claim, BackplaneError> {
        let mut epochs = self.epochs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let epoch = epochs.entry(room.to_owned()).or_insert(0);
        *epoch += 1;
        // A single node is never fenced: the token is never cancelled.
        Ok(Claim {
            epoch: *epoch,
            restored: None,
            fenced: CancellationToken::new(),
            lost: CancellationToken::new(),
        })
    }

    async fn commit(&self, _room: &str, _epoch: u64, _batch: CommitBatch<'_>) -> Result<(), BackplaneError> {
        // The room's memory is the store: a sequenced batch is as durable as it gets here.
        Ok(())
    }

    async fn release(&self, _room: &str, _epoch: u64, _dispose: bool) -> Result<(), BackplaneError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn epochs_grow_across_claims_of_one_room() {
        let b = EmbeddedBackplane::new();
        let first = b.claim("r", "doc").await.unwrap().epoch;
        let second = b.claim("r", "doc").await.unwrap().epoch;
        assert!(second > first);
        assert_eq!(b.claim("other", "doc").await.unwrap().epoch, 1);
    }
}
