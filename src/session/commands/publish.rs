//! `publish`: a `message` to every subscriber of a channel, on every
//! instance.

use super::super::context::{Context, Gone};
use crate::events::{InternalEvent, MessagePublished};
use crate::protocol;
use crate::routing::Audience;

pub(super) async fn run(
    ctx: &mut Context,
    channel: String,
    content: String,
    sampled: bool,
) -> Result<(), Gone> {
    if !protocol::valid_channel(&channel) {
        return ctx.invalid_channel(sampled).await;
    }
    let delivery = ctx.delivery(Some(channel.clone()), content, sampled);
    let routed = ctx.route(Audience::Channel(&channel), &delivery).await?;
    if sampled {
        MessagePublished {
            channel: &channel,
            message_id: &delivery.message_id,
            delivered: routed.local.delivered,
            dropped: routed.local.dropped,
            cluster_queued: routed.queued_for_cluster,
        }
        .emit();
    }
    ctx.report_forward(routed.cluster_error, sampled).await
}
