//! Text payloads: bytes known to be UTF-8.

use bytes::Bytes;
use std::fmt;

/// Bytes that are valid UTF-8: a text message's payload, shared without a
/// copy between the read buffer, the handler, and (for echoes and
/// deliveries) the writers.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Checks `bytes`, and returns them back when they are not UTF-8.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, Bytes> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Self(bytes)),
            Err(_) => Err(bytes),
        }
    }

    /// For bytes the caller has just checked.
    pub(super) fn from_checked(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Self(bytes)
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks (or takes a `str`), and the bytes
        // are immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Self(Bytes::from(text))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Self {
        Self(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_utf8_gets_in() {
        let ok = Utf8Bytes::try_from_bytes(Bytes::from_static("héllo".as_bytes())).unwrap();
        assert_eq!(ok.as_str(), "héllo");
        assert_eq!(ok.len(), 6);
        let bad = Bytes::from_static(&[b'a', 0xc3]);
        assert_eq!(Utf8Bytes::try_from_bytes(bad.clone()), Err(bad));
        assert_eq!(Utf8Bytes::from(String::from("x")).as_str(), "x");
    }
}
