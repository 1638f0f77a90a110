//! One handler per client frame type, in the manner of mini-redis's
//! `cmd/`. The reader decodes and samples a frame, then [`dispatch`]
//! hands it to its handler with the session's [`Context`]: what a handler
//! may touch, never the reader itself.
//!
//! A new message type is a variant of `protocol::ClientFrame` (and its row
//! in `protocol`'s kind table), its arm in `protocol/one_pass.rs`, a file
//! here, and its arm below; the compiler points at each.

mod direct;
mod echo;
mod ping;
mod publish;
mod subscribe;
mod unsubscribe;

use super::context::{Context, Gone};
use crate::protocol::ClientFrame;

pub(super) async fn dispatch(
    ctx: &mut Context,
    frame: ClientFrame,
    sampled: bool,
) -> Result<(), Gone> {
    match frame {
        ClientFrame::Ping { id } => ping::run(ctx, id, sampled).await,
        ClientFrame::Echo { content } => echo::run(ctx, content, sampled).await,
        ClientFrame::Subscribe { channel } => subscribe::run(ctx, channel, sampled).await,
        ClientFrame::Unsubscribe { channel } => unsubscribe::run(ctx, channel, sampled).await,
        ClientFrame::Publish { channel, content } => {
            publish::run(ctx, channel, content, sampled).await
        }
        ClientFrame::Direct {
            to_session,
            to_user,
            content,
        } => direct::run(ctx, to_session, to_user, content, sampled).await,
    }
}
