//! `ping`: answered with `pong` and the server's clock.

use super::super::context::{Context, Gone};
use crate::protocol::{self, ServerFrame};

pub(super) async fn run(ctx: &mut Context, id: Option<String>, sampled: bool) -> Result<(), Gone> {
    // Only a sampled message has a span to record it on; for the others
    // this would look up, clone and drop the session's span for nothing.
    if let Some(id) = id.as_ref().filter(|_| sampled) {
        tracing::Span::current().record("ws.message.id", id.as_str());
    }
    let pong = ServerFrame::Pong {
        server_time_ms: protocol::unix_ms(std::time::SystemTime::now()),
        id,
    };
    ctx.reply_frame(pong, sampled).await
}
