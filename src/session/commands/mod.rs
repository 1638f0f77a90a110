//! One handler per client frame type, in the manner of mini-redis's
//! `cmd/`. The reader decodes and samples a frame, then [`dispatch`]
//! hands it to its handler.
//!
//! A new message type is a variant of `protocol::ClientFrame` (and its row
//! in `protocol`'s kind table), a file here, and its arm below; the
//! compiler points at each.

mod direct;
mod echo;
mod ping;
mod publish;
mod subscribe;
mod unsubscribe;

use super::reader::{Gone, Reader};
use crate::protocol::ClientFrame;

pub(super) async fn dispatch(
    reader: &mut Reader,
    frame: ClientFrame,
    sampled: bool,
) -> Result<(), Gone> {
    match frame {
        ClientFrame::Ping { id } => ping::run(reader, id, sampled).await,
        ClientFrame::Echo { content } => echo::run(reader, content, sampled).await,
        ClientFrame::Subscribe { channel } => subscribe::run(reader, channel, sampled).await,
        ClientFrame::Unsubscribe { channel } => unsubscribe::run(reader, channel, sampled).await,
        ClientFrame::Publish { channel, content } => {
            publish::run(reader, channel, content, sampled).await
        }
        ClientFrame::Direct {
            to_session,
            to_user,
            content,
        } => direct::run(reader, to_session, to_user, content, sampled).await,
    }
}
