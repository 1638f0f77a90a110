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
    #[error("the token has no `exp` claim, and this server requires one")]
    MissingExpiry,
    #[error("the token is not for this audience")]
    WrongAudience,
    #[error("the token is not from the expected issuer")]
    WrongIssuer,
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
            AuthError::MissingExpiry => "token_exp_required",
            AuthError::WrongAudience => "token_audience",
            AuthError::WrongIssuer => "token_issuer",
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
    pub iss: Option<String>,
    /// One audience or several (RFC 7519 4.1.3).
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// `"wstrace_debug": true` makes the session a debug session (any
    /// other value is ignored, never an error).
    #[serde(default)]
    pub wstrace_debug: Option<serde_json::Value>,
}

/// Who a valid token names, and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSubject {
    pub user: String,
    /// The token carries `"wstrace_debug": true`.
    pub debug: bool,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    })
}

/// What a token must say beyond a valid signature and subject
/// (`--jwt-require-exp`, `--jwt-audience`, `--jwt-issuer`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtRules {
    /// Refuse tokens without `exp`: a leaked token without one is valid
    /// forever.
    pub require_exp: bool,
    /// `aud` must name this (or contain it).
    pub audience: Option<String>,
    /// `iss` must be this.
    pub issuer: Option<String>,
}

/// Verifies HS256 JWTs with one shared secret.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    key: Secret,
    rules: JwtRules,
}

impl JwtVerifier {
    pub fn new(key: Secret) -> Self {
        Self {
            key,
            rules: JwtRules::default(),
        }
    }

    pub fn with_rules(mut self, rules: JwtRules) -> Self {
        self.rules = rules;
        self
    }

    /// Checks signature, `exp`, `nbf`, and returns the subject.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<String, AuthError> {
        self.verify_subject(token, now_unix).map(|s| s.user)
    }

    /// [`verify`](Self::verify), with the claims beyond the subject.
    pub fn verify_subject(&self, token: &str, now_unix: u64) -> Result<TokenSubject, AuthError> {
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
        // Saturating: a token with `exp` near u64::MAX must not wrap into
        // the past (or panic).
        if claims
            .exp
            .is_some_and(|exp| now_unix >= exp.saturating_add(LEEWAY_SECS))
        {
            return Err(AuthError::Expired);
        }
        if claims.exp.is_none() && self.rules.require_exp {
            return Err(AuthError::MissingExpiry);
        }
        if claims
            .nbf
            .is_some_and(|nbf| now_unix.saturating_add(LEEWAY_SECS) < nbf)
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(audience) = &self.rules.audience
            && !claims.aud.contains(audience)
        {
            return Err(AuthError::WrongAudience);
        }
        if let Some(issuer) = &self.rules.issuer
            && claims.iss.as_ref() != Some(issuer)
        {
            return Err(AuthError::WrongIssuer);
        }
        let debug = claims.wstrace_debug == Some(serde_json::Value::Bool(true));
        let user = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingSubject)?;
        Ok(TokenSubject { user, debug })
    }

    /// Signs claims as an HS256 JWT: the issuer's side, used by the tests and
    /// the benchmark harness to make tokens (the tools take a token, they
    /// never sign one).
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

/// Whether a presented secret is the expected one. Both are hashed first,
/// so the comparison takes the same time whatever their lengths and
/// wherever they differ: neither the secret's content nor its length leaks.
pub fn secret_matches(presented: &str, expected: &Secret) -> bool {
    use sha2::{Digest, Sha256};
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.expose().as_bytes());
    constant_time_eq(&presented, &expected)
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

/// Which `Host` names the server answers to: the defence against DNS
/// rebinding, where a page on `evil.example` re-points that name at
/// 127.0.0.1 and then talks to a local server as if same-origin (its
/// `Origin` and `Host` then agree, so the Origin check alone passes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// Only loopback names (`localhost`, `127.x.x.x`, `[::1]`): the default
    /// for a server listening on a loopback address.
    Loopback,
    /// Any name: the default for a server listening on a public or
    /// unspecified address, whose names it cannot know (set
    /// `--allowed-host` there).
    Any,
    /// Exact host names (port ignored), `*` for any.
    Allow(Vec<String>),
}

impl HostPolicy {
    pub fn new(allowed: &[String], listen: Option<std::net::SocketAddr>) -> Self {
        if !allowed.is_empty() {
            HostPolicy::Allow(allowed.iter().map(|h| host_name(h).to_string()).collect())
        } else if listen.is_none_or(|addr| addr.ip().is_loopback()) {
            HostPolicy::Loopback
        } else {
            HostPolicy::Any
        }
    }

    /// A request without `Host` (HTTP/1.0) passes: a browser always sends
    /// one.
    pub fn allows(&self, host: Option<&HeaderValue>) -> bool {
        let Some(host) = host else { return true };
        let Ok(host) = host.to_str() else {
            return false;
        };
        let name = host_name(host);
        match self {
            HostPolicy::Any => true,
            HostPolicy::Allow(list) => list.iter().any(|h| h == "*" || *h == name),
            HostPolicy::Loopback => {
                name == "localhost"
                    || name.ends_with(".localhost")
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

/// `Example.COM:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let name = if host.starts_with('[') {
        host.split_once(']').map_or(host.as_str(), |(name, _)| name)
    } else {
        host.rsplit_once(':')
            .map_or(host.as_str(), |(name, _)| name)
    };
    if host.starts_with('[') {
        format!("{name}]")
    } else {
        name.trim_end_matches('.').to_string()
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
    let Some((scheme, credentials, host)) = split_credentials(url) else {
        return url.to_string();
    };
    let user = credentials.split_once(':').map_or("", |(user, _)| user);
    // A user name with URL metacharacters may be a password typed without
    // its colon: hide it too.
    let user = if user.contains(['/', '?', '#', '@']) {
        ""
    } else {
        user
    };
    format!("{scheme}{user}:***@{host}")
}

/// `(scheme://, credentials, host and the rest)` of a URL with
/// credentials. The credentials end at the **last** `@`: a password may
/// hold `@`, `/`, `#` or `?` unescaped, and cutting at the first `/`
/// would print the rest of it.
fn split_credentials(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let (credentials, host) = rest.rsplit_once('@')?;
    Some((scheme, credentials, host))
}

/// Whether the URL's credentials hold characters that end a URL's
/// authority (`/ ? # @`, and `:` in the password is fine): a URL parser
/// then reads part of the password as host or path. They must be
/// percent-encoded.
pub fn credentials_need_encoding(url: &str) -> bool {
    split_credentials(url)
        .is_some_and(|(_, credentials, _)| credentials.contains(['/', '?', '#', '@']))
}

/// `text` with the URL's password taken out, as written and as
/// percent-decoded: for error messages of libraries that were given the
/// URL (and might quote any part of it).
pub fn scrub_password(text: &str, url: &str) -> String {
    let Some((_, credentials, _)) = split_credentials(url) else {
        return text.to_string();
    };
    let password = credentials.split_once(':').map_or(credentials, |(_, p)| p);
    if password.is_empty() {
        return text.to_string();
    }
    let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
    let mut scrubbed = text.replace(password, "***");
    if !decoded.is_empty() {
        scrubbed = scrubbed.replace(decoded.as_ref(), "***");
    }
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_rules_require_exp_audience_and_issuer() {
        let key = Secret::new("k");
        let now = 1_000_000;
        let plain = JwtVerifier::new(key.clone());
        let strict = JwtVerifier::new(key).with_rules(JwtRules {
            require_exp: true,
            audience: Some("wstrace".into()),
            issuer: Some("https://idp.example".into()),
        });
        let good = plain.sign(&serde_json::json!({
            "sub": "ann", "exp": now + 60, "aud": ["other", "wstrace"], "iss": "https://idp.example"
        }));
        assert_eq!(strict.verify(&good, now).unwrap(), "ann");
        let cases = [
            (
                serde_json::json!({"sub": "ann", "aud": "wstrace", "iss": "https://idp.example"}),
                AuthError::MissingExpiry,
            ),
            (
                serde_json::json!({"sub": "ann", "exp": now + 60, "aud": "other", "iss": "https://idp.example"}),
                AuthError::WrongAudience,
            ),
            (
                serde_json::json!({"sub": "ann", "exp": now + 60, "iss": "https://idp.example"}),
                AuthError::WrongAudience,
            ),
            (
                serde_json::json!({"sub": "ann", "exp": now + 60, "aud": "wstrace", "iss": "https://evil.example"}),
                AuthError::WrongIssuer,
            ),
        ];
        for (claims, error) in cases {
            let token = plain.sign(&claims);
            assert_eq!(strict.verify(&token, now), Err(error), "{claims}");
            // Without rules the same tokens pass.
            assert_eq!(plain.verify(&token, now).unwrap(), "ann");
        }
        // An exp at the end of time neither wraps nor panics.
        let forever =
            plain.sign(&serde_json::json!({"sub": "ann", "exp": u64::MAX, "nbf": u64::MAX}));
        assert_eq!(plain.verify(&forever, now), Err(AuthError::NotYetValid));
        assert_eq!(plain.verify(&forever, u64::MAX - 10), Ok("ann".to_string()));
    }

    #[test]
    fn only_a_true_debug_claim_asks_for_a_debug_session() {
        let jwt = JwtVerifier::new(Secret::new("k"));
        let subject = |claims: serde_json::Value| jwt.verify_subject(&jwt.sign(&claims), 0);
        let debug = |value: serde_json::Value| {
            subject(serde_json::json!({"sub": "ann", "wstrace_debug": value}))
                .unwrap()
                .debug
        };
        assert!(debug(serde_json::json!(true)));
        // Anything else is ignored, and the token is still valid.
        for value in [
            serde_json::json!(false),
            serde_json::json!("true"),
            serde_json::json!(1),
            serde_json::json!(null),
        ] {
            assert!(!debug(value.clone()), "{value}");
        }
        assert!(!subject(serde_json::json!({"sub": "ann"})).unwrap().debug);
    }

    #[test]
    fn secrets_are_compared_whatever_their_length() {
        let expected = Secret::new("s3cret-admin-token");
        assert!(secret_matches("s3cret-admin-token", &expected));
        for wrong in ["", "s", "s3cret-admin-toke", "s3cret-admin-token-and-more"] {
            assert!(!secret_matches(wrong, &expected), "{wrong}");
        }
    }

    #[test]
    fn a_loopback_server_answers_only_to_loopback_names() {
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        let loopback = HostPolicy::new(&[], Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(loopback, HostPolicy::Loopback);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.5.6.7",
        ] {
            assert!(loopback.allows(Some(&h(ok))), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.1:8080",
            "localhost.evil.example",
        ] {
            assert!(!loopback.allows(Some(&h(bad))), "{bad}");
        }
        assert!(loopback.allows(None));
        let public = HostPolicy::new(&[], Some("0.0.0.0:8080".parse().unwrap()));
        assert!(public.allows(Some(&h("wstrace-1:8080"))));
        let listed = HostPolicy::new(&["ws.example.com".into()], None);
        assert!(listed.allows(Some(&h("WS.example.com:443"))));
        assert!(!listed.allows(Some(&h("127.0.0.1:8080"))));
    }

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
        // Metacharacters in the password: nothing of it is printed.
        for url in [
            "redis://:p@ss/w#rd@cache:6379/0",
            "redis://app:p@ss/w#rd?x@cache:6379",
            "redis://:p/ss@cache",
            "redis://:p%40ss@cache",
        ] {
            let shown = redact_url(url);
            assert!(
                shown.ends_with("@cache:6379/0")
                    || shown.ends_with("@cache:6379")
                    || shown.ends_with("@cache"),
                "{shown}"
            );
            for part in ["p@ss", "w#rd", "p/ss", "p%40ss", "ss/"] {
                assert!(!shown.contains(part), "{url} shown as {shown}");
            }
        }
        assert_eq!(
            redact_url("redis://:p@ss/w#rd@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
    }

    #[test]
    fn passwords_are_scrubbed_from_library_errors() {
        let url = "redis://:p%40ss/w#rd@cache:6379";
        let error = "Invalid URL p%40ss/w#rd and p@ss/w#rd";
        assert_eq!(scrub_password(error, url), "Invalid URL *** and ***");
        assert_eq!(scrub_password("fine", "redis://cache"), "fine");
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
