//! The opening handshake (RFC 6455 4.2): what makes a request an upgrade,
//! and the key that answers it.

use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, header};
use sha1::{Digest, Sha1};

/// Why a request to a WebSocket endpoint is not a WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("a websocket upgrade is a GET request")]
    NotGet,
    #[error("missing `Connection: upgrade`")]
    NoConnectionUpgrade,
    #[error("missing `Upgrade: websocket`")]
    NoUpgradeWebsocket,
    #[error("only websocket version 13 is supported")]
    UnsupportedVersion,
    #[error("missing `Sec-WebSocket-Key`")]
    NoKey,
    #[error("`Sec-WebSocket-Key` must be one base64 value of 16 bytes")]
    BadKey,
}

/// Checks an upgrade request and returns its `Sec-WebSocket-Accept` value.
pub fn check_request(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::NoUpgradeWebsocket);
    }
    // Exactly one version, 13: "13, 8" or two version headers are not a
    // version this server speaks.
    if single(headers, header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    if !headers.contains_key(header::SEC_WEBSOCKET_KEY) {
        return Err(HandshakeError::NoKey);
    }
    let key = single(headers, header::SEC_WEBSOCKET_KEY).ok_or(HandshakeError::BadKey)?;
    // RFC 6455 4.2.1: the key is a base64-encoded 16-byte nonce.
    let nonce = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| HandshakeError::BadKey)?;
    if nonce.len() != 16 {
        return Err(HandshakeError::BadKey);
    }
    Ok(accept_key(key.as_bytes()))
}

/// The header's value if it appears exactly once.
fn single(headers: &HeaderMap, name: header::HeaderName) -> Option<&HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

/// Whether a comma-separated header has `token`, in any case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept`: base64 of the SHA-1 of the key and the GUID.
fn accept_key(key: &[u8]) -> HeaderValue {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    HeaderValue::try_from(encoded).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        headers.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        headers
    }

    #[test]
    fn the_rfc_example_key_gets_the_rfc_answer() {
        let accept = check_request(&Method::GET, &upgrade_headers()).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn each_missing_part_has_its_reason() {
        assert_eq!(
            check_request(&Method::POST, &upgrade_headers()),
            Err(HandshakeError::NotGet)
        );
        let cases = [
            (header::CONNECTION, HandshakeError::NoConnectionUpgrade),
            (header::UPGRADE, HandshakeError::NoUpgradeWebsocket),
            (
                header::SEC_WEBSOCKET_VERSION,
                HandshakeError::UnsupportedVersion,
            ),
            (header::SEC_WEBSOCKET_KEY, HandshakeError::NoKey),
        ];
        for (name, error) in cases {
            let mut headers = upgrade_headers();
            headers.remove(&name);
            assert_eq!(check_request(&Method::GET, &headers), Err(error));
        }
        for version in ["8", "13, 8", "8, 13", " 13"] {
            let mut headers = upgrade_headers();
            headers.insert(header::SEC_WEBSOCKET_VERSION, version.parse().unwrap());
            assert_eq!(
                check_request(&Method::GET, &headers),
                Err(HandshakeError::UnsupportedVersion),
                "{version:?}"
            );
        }
        let mut headers = upgrade_headers();
        headers.append(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert_eq!(
            check_request(&Method::GET, &headers),
            Err(HandshakeError::UnsupportedVersion),
            "13 and 8 as two headers"
        );
    }

    #[test]
    fn a_key_that_is_not_a_16_byte_nonce_is_refused() {
        // Empty, not base64, 4 bytes, 17 bytes, unpadded.
        let bad = [
            "",
            "not base64!!",
            "AAAAAA==",
            "AAAAAAAAAAAAAAAAAAAAAAA=",
            "dGhlIHNhbXBsZSBub25jZQ",
        ];
        for key in bad {
            let mut headers = upgrade_headers();
            headers.insert(header::SEC_WEBSOCKET_KEY, key.parse().unwrap());
            assert_eq!(
                check_request(&Method::GET, &headers),
                Err(HandshakeError::BadKey),
                "{key:?}"
            );
        }
        let mut headers = upgrade_headers();
        headers.append(
            header::SEC_WEBSOCKET_KEY,
            "AAAAAAAAAAAAAAAAAAAAAA==".parse().unwrap(),
        );
        assert_eq!(
            check_request(&Method::GET, &headers),
            Err(HandshakeError::BadKey),
            "two keys"
        );
    }
}
