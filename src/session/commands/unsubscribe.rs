//! `unsubscribe`: leave a channel.

use super::super::context::{Context, Gone};
use crate::events::{InternalEvent, Subscription};
use crate::protocol::{ErrorCode, ServerFrame};

pub(super) async fn run(ctx: &mut Context, channel: String, sampled: bool) -> Result<(), Gone> {
    if !ctx.router.unsubscribe(ctx.session.id, &channel) {
        return ctx
            .error(
                ErrorCode::NotSubscribed,
                "not subscribed to that channel",
                sampled,
            )
            .await;
    }
    Subscription {
        channel: &channel,
        subscribed: false,
    }
    .emit();
    ctx.reply_frame(ServerFrame::Unsubscribed { channel }, sampled)
        .await
}
