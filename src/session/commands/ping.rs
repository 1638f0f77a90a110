//! `ping`: answered with `pong` and the server's clock.

use super::super::reader::{Gone, Reader, now_ms};
use crate::protocol::ServerFrame;

pub(super) async fn run(
    reader: &mut Reader,
    id: Option<String>,
    sampled: bool,
) -> Result<(), Gone> {
    // Only a sampled message has a span to record it on; for the others
    // this would look up, clone and drop the session's span for nothing.
    if let Some(id) = id.as_ref().filter(|_| sampled) {
        tracing::Span::current().record("ws.message.id", id.as_str());
    }
    let pong = ServerFrame::Pong {
        server_time_ms: now_ms(),
        id,
    };
    reader.reply_frame(pong, sampled).await
}
