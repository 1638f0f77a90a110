//! `echo`: the content back.

use super::super::context::{Context, Gone};
use crate::protocol::ServerFrame;

pub(super) async fn run(ctx: &mut Context, content: String, sampled: bool) -> Result<(), Gone> {
    ctx.reply_frame(ServerFrame::Echo { content }, sampled)
        .await
}
