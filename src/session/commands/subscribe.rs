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
    match ctx.router.subscribe(ctx.session.id, &channel, limit).await {
        Ok(cluster) => {
            Subscription {
                channel: &channel,
                subscribed: true,
            }
            .emit();
            ctx.reply_frame(ServerFrame::Subscribed { channel }, sampled)
                .await?;
            // Joined here; the subscriber is told that other instances'
            // publishes do not reach it yet (they will once Redis is back).
            match cluster {
                Ok(()) => Ok(()),
                Err(error) => ctx.reply_frame(error.to_listen_frame(), sampled).await,
            }
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
