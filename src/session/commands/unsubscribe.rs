//! `unsubscribe`: leave a channel.

use super::super::reader::{Gone, Reader};
use crate::events::Subscription;
use crate::protocol::{ErrorCode, ServerFrame};

pub(super) async fn run(reader: &mut Reader, channel: String, sampled: bool) -> Result<(), Gone> {
    let hub = reader.state.router.hub();
    if !hub.unsubscribe(reader.session.id, &channel) {
        return reader
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
    reader
        .reply_frame(ServerFrame::Unsubscribed { channel }, sampled)
        .await
}
