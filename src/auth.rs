//! Who may connect and who may administer: JWT (HS256) for sessions, an
//! `Origin` allowlist for browsers, a bearer token for the admin API.
//!
//! Every secret lives in a [`Secret`], whose `Debug` never shows it, and no
//! token is ever put in a span, a log line or a recorded URL: the HTTP span
//! records the path only, and errors describe a token without quoting it.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// Longest token we look at; anything longer is malformed.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not HS256")]
    UnsupportedAlgorithm,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no `sub` claim")]
    MissingSubject,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed => "token_malformed",
            AuthError::UnsupportedAlgorithm => "token_algorithm",
            AuthError::BadSignature => "token_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::MissingSubject => "token_subject",
        }
    }
}

#[derive(Debug, Deserialize)]
struct JwtHeader {
    alg: String,
}

/// The claims wstrace uses.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: Option<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

/// Verifies HS256 JWTs with one shared secret.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    key: Secret,
}

impl JwtVerifier {
    pub fn new(key: Secret) -> Self {
        Self { key }
    }

    /// Checks signature, `exp`, `nbf`, and returns the subject.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<String, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let alg: JwtHeader = decode_json(header)?;
        // Only HS256: never "none", never an algorithm the token picks.
        if alg.alg != "HS256" {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Malformed)?;
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = decode_json(payload)?;
        if claims.exp.is_some_and(|exp| now_unix >= exp + LEEWAY_SECS) {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now_unix + LEEWAY_SECS < nbf) {
            return Err(AuthError::NotYetValid);
        }
        claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingSubject)
    }

    /// Signs claims as an HS256 JWT (for the client, the load tool and tests).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC takes keys of any length")
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// The bearer token of a request: `Authorization: Bearer …`, or else the
/// `token` query parameter (browsers cannot set headers on a WebSocket).
pub fn bearer_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    crate::trace_context::query_param(query?, "token").and_then(Result::ok)
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which browser origins may open a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// The `Origin` must name the host the request was sent to.
    SameHost,
    /// Exact origins (`https://app.example.com`), or `*` for any.
    Allow(Vec<String>),
}

impl OriginPolicy {
    pub fn from_list(origins: &[String]) -> Self {
        if origins.is_empty() {
            OriginPolicy::SameHost
        } else {
            OriginPolicy::Allow(origins.iter().map(|o| normalize_origin(o)).collect())
        }
    }

    /// Requests without `Origin` come from non-browser clients, which can
    /// send any header they like anyway: they pass.
    pub fn allows(&self, origin: Option<&HeaderValue>, host: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin else { return true };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = normalize_origin(origin);
        match self {
            OriginPolicy::Allow(list) => list.iter().any(|o| o == "*" || *o == origin),
            OriginPolicy::SameHost => {
                let authority = origin.split_once("://").map_or("", |(_, a)| a);
                host.and_then(|h| h.to_str().ok())
                    .is_some_and(|h| h.eq_ignore_ascii_case(authority))
            }
        }
    }
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// A URL fit for a log line: `scheme://user:password@host/path` becomes
/// `scheme://user:***@host/path`, and a userinfo without a password (which
/// may itself be a key) becomes `:***`. Used for every URL the server
/// prints (Redis, the OTLP endpoint).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((credentials, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = credentials.split_once(':').map_or("", |(user, _)| user);
    let scheme = scheme.map(|s| format!("{s}://")).unwrap_or_default();
    format!("{scheme}{user}:***@{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:hunter2@cache"),
            "rediss://app:***@cache"
        );
        assert_eq!(
            redact_url("https://user:secret@otel.example:4318/v1/traces"),
            "https://user:***@otel.example:4318/v1/traces"
        );
        assert_eq!(
            redact_url("https://apikey@otel.example"),
            "https://:***@otel.example"
        );
        assert_eq!(redact_url("a:b@host:1"), "a:***@host:1");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact_url("http://127.0.0.1:4317"), "http://127.0.0.1:4317");
        assert_eq!(redact_url("not a url"), "not a url");
        assert!(!redact_url("redis://u:p@ss@h/1").contains("p@ss"));
    }
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(Secret::new("test-secret"))
    }

    #[test]
    fn valid_token_gives_subject() {
        let token = verifier().sign(&json!({"sub": "alice", "exp": NOW + 60}));
        assert_eq!(verifier().verify(&token, NOW), Ok("alice".into()));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let v = verifier();
        let other = JwtVerifier::new(Secret::new("other"));
        let good = v.sign(&json!({"sub": "alice"}));
        let (signing_input, _) = good.rsplit_once('.').unwrap();
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            signing_input.split('.').nth(1).unwrap()
        );
        let cases = [
            ("", AuthError::Malformed),
            ("a.b", AuthError::Malformed),
            ("a.b.c.d", AuthError::Malformed),
            ("!!.??.**", AuthError::Malformed),
            (&none_alg, AuthError::UnsupportedAlgorithm),
            (
                &other.sign(&json!({"sub": "alice"})),
                AuthError::BadSignature,
            ),
            (&format!("{signing_input}.AAAA"), AuthError::BadSignature),
            (
                &v.sign(&json!({"sub": "a", "exp": NOW - 3600})),
                AuthError::Expired,
            ),
            (
                &v.sign(&json!({"sub": "a", "nbf": NOW + 3600})),
                AuthError::NotYetValid,
            ),
            (
                &v.sign(&json!({"exp": NOW + 60})),
                AuthError::MissingSubject,
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(v.verify(token, NOW), Err(expected), "{token}");
        }
    }

    #[test]
    fn leeway_tolerates_small_skew() {
        let token = verifier().sign(&json!({"sub": "a", "exp": NOW - 5}));
        assert!(verifier().verify(&token, NOW).is_ok());
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret([REDACTED])");
        assert!(!format!("{:?}", verifier()).contains("test-secret"));
    }

    #[test]
    fn bearer_from_header_or_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            bearer_token(&headers, Some("a=1&token=abc")),
            Some("abc".into())
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(
            bearer_token(&headers, Some("token=abc")),
            Some("xyz".into())
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer_token(&headers, None), None);
    }

    #[test]
    fn origin_policy() {
        let host = HeaderValue::from_static("127.0.0.1:8080");
        let same = OriginPolicy::SameHost;
        assert!(same.allows(None, Some(&host)));
        assert!(same.allows(
            Some(&HeaderValue::from_static("http://127.0.0.1:8080")),
            Some(&host)
        ));
        assert!(!same.allows(
            Some(&HeaderValue::from_static("http://evil.example")),
            Some(&host)
        ));
        let list = OriginPolicy::from_list(&["https://App.example.com/".into()]);
        assert!(list.allows(
            Some(&HeaderValue::from_static("https://app.example.com")),
            None
        ));
        assert!(!list.allows(
            Some(&HeaderValue::from_static("https://app.example.com.evil")),
            None
        ));
        let any = OriginPolicy::from_list(&["*".into()]);
        assert!(any.allows(Some(&HeaderValue::from_static("https://x")), None));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
