//! Request and response between instances, over pub/sub.
//!
//! The asker publishes an [`Action::Ask`] (or an acknowledged delivery)
//! with a fresh request id, and Redis says how many instances heard it;
//! each answers on the asker's own channel with an [`Action::Answer`]. The
//! asker waits for that many answers, or until a timeout, and then says who
//! did not answer: nothing is reported as done that was not confirmed.

use opentelemetry::trace::SpanContext;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::envelope::{Action, Answer, Envelope};
use super::{Cluster, ClusterError, forward};
use crate::sync::lock;

/// One instance's answer.
#[derive(Debug, Clone)]
pub struct Answered {
    pub instance_id: String,
    pub answer: Answer,
}

/// What one request gathered.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Other instances that heard the request (Redis's count).
    pub heard_by: usize,
    pub answers: Vec<Answered>,
}

impl Gathered {
    /// Instances that heard it but did not answer in time.
    pub fn unanswered(&self) -> usize {
        self.heard_by.saturating_sub(self.answers.len())
    }
}

/// Requests of this instance waiting for answers.
#[derive(Debug, Default)]
pub struct Pending {
    waiting: Mutex<HashMap<Uuid, mpsc::UnboundedSender<Answered>>>,
}

/// Takes a request out of [`Pending`] when its asker stops waiting.
struct Forget<'a>(&'a Pending, Uuid);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.0.waiting).remove(&self.1);
    }
}

impl Pending {
    /// Hands an answer to its request; an answer nobody waits for (late,
    /// or not for this instance) is dropped.
    pub fn answered(&self, request_id: Uuid, answered: Answered) -> bool {
        match lock(&self.waiting).get(&request_id) {
            Some(waiting) => waiting.send(answered).is_ok(),
            None => false,
        }
    }
}

impl Cluster {
    /// Publishes `action(request_id)` to `channel` and gathers the answers
    /// of the instances that heard it, for at most `timeout`.
    /// `hears_itself`: this instance listens on `channel` too (Redis counts
    /// it, and it does not answer itself).
    pub async fn ask(
        &self,
        channel: &str,
        action: impl FnOnce(Uuid) -> Action,
        hears_itself: bool,
        origin: &SpanContext,
        timeout: Duration,
    ) -> Result<Gathered, ClusterError> {
        let request_id = Uuid::now_v7();
        let (answers, mut incoming) = mpsc::unbounded_channel();
        lock(&self.pending.waiting).insert(request_id, answers);
        let _forget = Forget(&self.pending, request_id);
        let receivers = forward::send(self, channel, action(request_id), true, origin).await?;
        let mut gathered = Gathered {
            heard_by: (receivers as usize).saturating_sub(usize::from(hears_itself)),
            answers: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        while gathered.answers.len() < gathered.heard_by {
            match tokio::time::timeout_at(deadline, incoming.recv()).await {
                Ok(Some(answered)) => gathered.answers.push(answered),
                _ => break,
            }
        }
        Ok(gathered)
    }

    /// Answers `envelope`'s request on its asker's channel, through the
    /// outgoing queue (never waiting here).
    pub fn answer(&self, envelope: &Envelope, request_id: Uuid, answer: Answer) {
        let channel = Cluster::instance_channel(&envelope.from_instance);
        let action = Action::Answer { request_id, answer };
        let reply = forward::envelope_for(self, action, &envelope.origin);
        let _ = self.enqueue(super::publisher::PublishJob {
            channel,
            wire: self.seal(&reply),
            sampled: false,
            span: tracing::Span::none(),
            reply_to: None,
        });
    }
}
