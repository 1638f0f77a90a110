//! `direct`: a `message` to one session, or to every session of one user,
//! wherever they are connected.

use uuid::Uuid;

use super::super::context::{Context, Gone};
use crate::events::{DirectMessageSent, InternalEvent};
use crate::routing::Audience;

pub(super) async fn run(
    ctx: &mut Context,
    to_session: Option<String>,
    to_user: Option<String>,
    content: String,
    sampled: bool,
) -> Result<(), Gone> {
    let audience = match (&to_session, &to_user) {
        (Some(id), _) => match Uuid::parse_str(id) {
            Ok(id) => Audience::Session(id),
            Err(_) => return ctx.no_such_recipient(sampled).await,
        },
        (None, Some(user)) => Audience::User(user),
        (None, None) => return ctx.no_such_recipient(sampled).await,
    };
    let delivery = ctx.delivery(None, content, sampled);
    let routed = ctx.route(audience, &delivery).await?;
    if routed.reached_nobody() {
        return match routed.cluster_error {
            Some(error) => ctx.cluster_unavailable(&error, sampled).await,
            None => ctx.no_such_recipient(sampled).await,
        };
    }
    if sampled {
        DirectMessageSent {
            message_id: &delivery.message_id,
            delivered: routed.local.delivered,
            dropped: routed.local.dropped,
            remote_sessions: routed.remote_sessions,
        }
        .emit();
    }
    ctx.report_forward(routed.cluster_error, sampled).await
}
