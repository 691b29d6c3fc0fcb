//! Admission control for inference requests: at most `workers` run, at most `capacity`
//! wait, and the rest are turned away at once (back-pressure: `429` rather than an
//! unbounded backlog). Concept uploads have slots of their own, never waited for. Requests
//! are admitted before their bodies are read, so the memory held in bodies is bounded by
//! the slots, not by the number of clients.
//!
//! With the runtime's decode batch, a chat holds its worker slot only while its body is read
//! and its prompt prepared: it then takes one of the batch's chat slots (as many as the
//! batch has rows), hands the worker slot on, and keeps the chat slot until its answer ends.
//! So a few workers bound the memory of bodies in flight while a full batch decodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The run-and-wait gate in front of the runtime.
pub(crate) struct Admission {
    workers: usize,
    capacity: usize,
    slots: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    uploads: Arc<Semaphore>,
    /// Chats generating in the decode batch; `None` when each chat decodes alone (in its
    /// worker slot).
    chats: Option<Arc<Semaphore>>,
}

/// A running slot; the next waiting request starts when it is dropped.
pub(crate) type Permit = OwnedSemaphorePermit;

impl Admission {
    /// `chats`: the decode batch's rows (chat slots), or 0 when chats decode alone.
    pub(crate) fn new(workers: usize, capacity: usize, uploads: usize, chats: usize) -> Self {
        Admission {
            workers,
            capacity,
            slots: Arc::new(Semaphore::new(workers)),
            queued: Arc::new(AtomicUsize::new(0)),
            uploads: Arc::new(Semaphore::new(uploads)),
            chats: (chats > 0).then(|| Arc::new(Semaphore::new(chats))),
        }
    }

    /// A chat slot of the decode batch, waited for while holding the worker slot (so the
    /// wait is bounded by the worker queue); `None` when chats decode alone in their worker
    /// slot. Dropping the future gives up the wait.
    pub(crate) async fn admit_chat(&self) -> Result<Option<Permit>, ApiError> {
        match &self.chats {
            None => Ok(None),
            Some(chats) => Arc::clone(chats)
                .acquire_owned()
                .await
                .map(Some)
                .map_err(|_| ApiError::internal("the chat slots are closed")),
        }
    }

    /// An upload slot now, or `429` when every one is reading or installing a package.
    pub(crate) fn admit_upload(&self) -> Result<Permit, ApiError> {
        Arc::clone(&self.uploads).try_acquire_owned().map_err(|_| {
            ApiError::queue_full("the server is busy installing other uploads; retry later")
        })
    }

    /// A running slot, after waiting in the queue if every worker is busy; `429` when the
    /// queue is full too. Dropping the future leaves the queue.
    pub(crate) async fn admit(&self) -> Result<Permit, ApiError> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        let reserved = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q < self.capacity).then_some(q + 1)
            });
        if reserved.is_err() {
            return Err(ApiError::queue_full(format!(
                "the server is busy: {} requests running and {} waiting; retry later",
                self.workers, self.capacity
            )));
        }
        let _leave = Leave(Arc::clone(&self.queued));
        Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the request queue is closed"))
    }

    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests holding a slot.
    pub(crate) fn running(&self) -> usize {
        self.workers - self.slots.available_permits()
    }

    /// Requests waiting for a slot.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// Leaves the queue when dropped (admitted or given up).
struct Leave(Arc<AtomicUsize>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_turns_requests_away_until_a_slot_frees() {
        let admission = Arc::new(Admission::new(1, 1, 1, 0));
        let running = admission.admit().await.unwrap();
        assert_eq!((admission.running(), admission.queued()), (1, 0));

        let waiting = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.admit().await.map(|_permit| ()) })
        };
        for _ in 0..200 {
            if admission.queued() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(admission.queued(), 1);
        let refused = admission.admit().await.unwrap_err();
        assert_eq!(refused.status.as_u16(), 429);

        drop(running);
        waiting.await.unwrap().unwrap();
        assert_eq!((admission.running(), admission.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let admission = Admission::new(1, 1, 1, 0);
        let _running = admission.admit().await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), admission.admit()).await;
        assert!(gave_up.is_err());
        assert_eq!(admission.queued(), 0);
    }
}
