//! The writer task: the only code that writes to the socket.

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

use super::stats::{CloseDecision, SessionStats};

/// Writes queued frames until the queue closes or a close is decided; on a
/// server-side decision it sends the Close frame and stops (nothing may
/// follow a Close).
pub async fn run_writer<K>(
    mut sink: K,
    mut outbound: mpsc::Receiver<Message>,
    mut close: watch::Receiver<Option<CloseDecision>>,
    stats: Arc<SessionStats>,
) where
    K: Sink<Message, Error = axum::Error> + Unpin,
{
    loop {
        tokio::select! {
            biased;
            _ = decided(&mut close) => {
                let decision = close.borrow().clone();
                if let Some(decision) = decision.filter(CloseDecision::server_sends_close) {
                    let frame = CloseFrame {
                        code: decision.code,
                        reason: decision.reason.as_str().into(),
                    };
                    match sink.send(Message::Close(Some(frame))).await {
                        Ok(()) => tracing::debug!(
                            close_code = decision.code,
                            closed_by = decision.by.as_str(),
                            "close frame sent"
                        ),
                        Err(error) => tracing::debug!(%error, "could not send close frame"),
                    }
                }
                return;
            }
            next = outbound.recv() => {
                let Some(message) = next else { return };
                // Drain what is already queued, then flush once: one syscall
                // for a burst instead of one per frame.
                let mut batch = Some(message);
                while let Some(message) = batch.take() {
                    let data_len = data_len(&message);
                    if let Err(error) = sink.feed(message).await {
                        tracing::debug!(%error, "write failed; peer is gone");
                        return;
                    }
                    if let Some(len) = data_len {
                        stats.message_out(len);
                    }
                    batch = outbound.try_recv().ok();
                }
                if let Err(error) = sink.flush().await {
                    tracing::debug!(%error, "flush failed; peer is gone");
                    return;
                }
            }
        }
    }
}

/// Resolves once a close decision exists (or the signal is gone).
async fn decided(close: &mut watch::Receiver<Option<CloseDecision>>) {
    while close.borrow_and_update().is_none() {
        if close.changed().await.is_err() {
            return;
        }
    }
}

/// Size of a data frame; control frames are not messages.
fn data_len(message: &Message) -> Option<usize> {
    match message {
        Message::Text(t) => Some(t.len()),
        Message::Binary(b) => Some(b.len()),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
    }
}
