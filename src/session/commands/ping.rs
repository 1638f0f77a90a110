//! `ping`: answered with `pong` and the server's clock.

use super::super::reader::{Gone, Reader, now_ms};
use crate::protocol::ServerFrame;

pub(super) async fn run(
    reader: &mut Reader,
    id: Option<String>,
    sampled: bool,
) -> Result<(), Gone> {
    if let Some(id) = &id {
        tracing::Span::current().record("ws.message.id", id.as_str());
    }
    let pong = ServerFrame::Pong {
        server_time_ms: now_ms(),
        id,
    };
    reader.reply_frame(pong, sampled).await
}
