//! The reader task: reads frames, answers them through the writer's queue.

use axum::extract::ws::Message;
use futures_util::{Stream, StreamExt};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

use super::stats::{CloseDecision, CloseSignal, ClosedBy, PeerClose, SessionStats};
use crate::error::{SessionError, close_code};
use crate::protocol::{self, ClientFrame, ServerFrame};

pub struct Reader {
    pub outbound: mpsc::Sender<Message>,
    pub stats: Arc<SessionStats>,
    pub close: CloseSignal,
    pub peer_close: Arc<PeerClose>,
    pub max_message_bytes: usize,
}

impl Reader {
    /// Reads until the stream ends. A client Close is recorded and reading
    /// goes on, so the WebSocket layer can send its reply and end the
    /// stream cleanly; an error is recorded as the close decision.
    pub async fn run<T>(self, mut stream: T)
    where
        T: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        while let Some(item) = stream.next().await {
            self.stats.touch();
            let message = match item {
                Ok(message) => message,
                Err(error) => {
                    let error = SessionError::from_read(error, self.max_message_bytes);
                    self.fail(error);
                    return;
                }
            };
            let reply = match message {
                Message::Text(text) => {
                    self.stats.message_in(text.len());
                    Some(Message::Text(self.answer(text.as_str()).into()))
                }
                // Binary frames are echoed verbatim (documented in README).
                Message::Binary(bytes) => {
                    self.stats.message_in(bytes.len());
                    Some(Message::Binary(bytes))
                }
                // The WebSocket layer answers pings by itself.
                Message::Ping(_) => None,
                Message::Pong(payload) => {
                    if let Some(rtt) = self.stats.pong(&payload) {
                        tracing::trace!(rtt_us = rtt.as_micros() as u64, "pong");
                    }
                    None
                }
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f| (f.code, f.reason.to_string()))
                        .unwrap_or((close_code::NO_STATUS, String::new()));
                    self.peer_close.set(code, reason.clone());
                    self.close
                        .decide(CloseDecision::new(code, reason, ClosedBy::Client));
                    None
                }
            };
            if let Some(reply) = reply {
                // Waiting here is the backpressure: a client that does not
                // read its replies stops being read.
                if self.outbound.send(reply).await.is_err() {
                    return;
                }
            }
        }
        // The stream ended without a Close frame from the peer or from us.
        self.close.decide(CloseDecision::new(
            close_code::ABNORMAL,
            "connection lost without close frame",
            ClosedBy::Client,
        ));
    }

    fn answer(&self, text: &str) -> String {
        match protocol::decode(text) {
            Ok(ClientFrame::Ping { id }) => ServerFrame::Pong {
                server_time_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                id,
            }
            .to_json(),
            Ok(ClientFrame::Echo { content }) => ServerFrame::Echo { content }.to_json(),
            Err(error) => {
                self.stats.error();
                tracing::warn!(
                    error.code = error.code.as_str(),
                    error.message = %error.message,
                    ws.message.size = text.len(),
                    "rejected client frame"
                );
                error.to_frame().to_json()
            }
        }
    }

    fn fail(&self, error: SessionError) {
        if let SessionError::ConnectionLost(cause) = &error {
            // A client vanishing is its choice, not a server error.
            tracing::debug!(%cause, "peer went away without a close frame");
            self.close.decide(CloseDecision::new(
                close_code::ABNORMAL,
                error.close_reason(),
                ClosedBy::Client,
            ));
            return;
        }
        self.stats.error();
        tracing::warn!(
            error = %error,
            close_code = error.close_code(),
            "session read failed"
        );
        let code = if error.can_send_close() {
            error.close_code()
        } else {
            close_code::ABNORMAL
        };
        self.close.decide(CloseDecision::new(
            code,
            error.close_reason(),
            ClosedBy::Error,
        ));
    }
}
