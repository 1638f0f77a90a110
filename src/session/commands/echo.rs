//! `echo`: the content back.

use super::super::reader::{Gone, Reader};
use crate::protocol::ServerFrame;

pub(super) async fn run(reader: &mut Reader, content: String, sampled: bool) -> Result<(), Gone> {
    if reader.state.config.fault_panic_on_echo.as_deref() == Some(content.as_str()) {
        panic!("injected fault: echo of {content:?}");
    }
    reader
        .reply_frame(ServerFrame::Echo { content }, sampled)
        .await
}
