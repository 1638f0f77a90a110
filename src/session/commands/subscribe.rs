//! `subscribe`: join a channel, up to `--max-subscriptions`.

use super::super::context::{Context, Gone};
use crate::events::{InternalEvent, Subscription};
use crate::protocol::{self, ErrorCode, ServerFrame};
use crate::routing::SubscribeError;

pub(super) async fn run(ctx: &mut Context, channel: String, sampled: bool) -> Result<(), Gone> {
    if !protocol::valid_channel(&channel) {
        return ctx.invalid_channel(sampled).await;
    }
    let limit = ctx.max_subscriptions;
    let hub = ctx.router.hub();
    match hub.subscribe(ctx.session.id, &channel, limit) {
        Ok(_) => {
            Subscription {
                channel: &channel,
                subscribed: true,
            }
            .emit();
            ctx.reply_frame(ServerFrame::Subscribed { channel }, sampled)
                .await
        }
        Err(SubscribeError::TooMany { limit }) => {
            let message = format!("at most {limit} subscriptions per session");
            ctx.error(ErrorCode::TooManySubscriptions, &message, sampled)
                .await
        }
        // The session is closing and has left the hub: nothing to join,
        // and the reader goes on reading until the close handshake ends.
        Err(SubscribeError::NotConnected) => Ok(()),
    }
}
