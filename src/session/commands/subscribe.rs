//! `subscribe`: join a channel, up to `--max-subscriptions`.

use super::super::reader::{Gone, Reader};
use crate::events::Subscription;
use crate::protocol::{self, ErrorCode, ServerFrame};
use crate::routing::SubscribeError;

pub(super) async fn run(reader: &mut Reader, channel: String, sampled: bool) -> Result<(), Gone> {
    if !protocol::valid_channel(&channel) {
        return reader.invalid_channel(sampled).await;
    }
    let limit = reader.state.config.limits.max_subscriptions;
    let hub = reader.state.router.hub();
    match hub.subscribe(reader.session.id, &channel, limit) {
        Ok(_) => {
            Subscription {
                channel: &channel,
                subscribed: true,
            }
            .emit();
            reader
                .reply_frame(ServerFrame::Subscribed { channel }, sampled)
                .await
        }
        Err(SubscribeError::TooMany { limit }) => {
            let message = format!("at most {limit} subscriptions per session");
            reader
                .error(ErrorCode::TooManySubscriptions, &message, sampled)
                .await
        }
        // The session is closing and has left the hub: nothing to join,
        // and the reader goes on reading until the close handshake ends.
        Err(SubscribeError::NotConnected) => Ok(()),
    }
}
