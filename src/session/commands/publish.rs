//! `publish`: a `message` to every subscriber of a channel, on every
//! instance.

use super::super::reader::{Gone, Reader};
use crate::events::MessagePublished;
use crate::protocol;
use crate::routing::Audience;

pub(super) async fn run(
    reader: &mut Reader,
    channel: String,
    content: String,
    sampled: bool,
) -> Result<(), Gone> {
    if !protocol::valid_channel(&channel) {
        return reader.invalid_channel(sampled).await;
    }
    let delivery = reader.delivery(Some(channel.clone()), content, sampled);
    let routed = reader.route(Audience::Channel(&channel), &delivery).await?;
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
    reader.report_forward(routed.cluster_error, sampled).await
}
