//! HTTP: refused requests and upgrades, trace headers, the admin API.

use super::target::*;
use super::*;

/// A `traceparent` that does not parse: the request starts a new trace.
#[derive(Debug)]
pub struct TraceparentIgnored<'a> {
    pub source: &'a str,
    pub length: usize,
    pub reason: &'a str,
}

impl TraceparentIgnored<'_> {
    pub const MESSAGE: &'static str = "ignoring malformed traceparent; starting a new trace";
}

impl InternalEvent for TraceparentIgnored<'_> {
    fn emit(self) {
        let Some(suppressed) = process_budget(&TRACEPARENT_REFUSALS) else {
            return;
        };
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            lines_suppressed = suppressed,
            traceparent.source = self.source,
            traceparent.length = self.length,
            reason = self.reason
        );
    }
}

/// A `Forwarded` or `X-Forwarded-For` from a trusted proxy that could not
/// be read: the request's client is the proxy itself.
#[derive(Debug)]
pub struct ForwardedHeaderIgnored<'a> {
    pub header: &'static str,
    pub reason: &'static str,
    pub length: usize,
    pub metrics: &'a Metrics,
}

impl ForwardedHeaderIgnored<'_> {
    pub const MESSAGE: &'static str =
        "ignoring unreadable forwarding header from a trusted proxy; the client is the proxy";
}

impl InternalEvent for ForwardedHeaderIgnored<'_> {
    fn emit(self) {
        self.metrics.client_address_error(self.header, self.reason);
        let Some(suppressed) = process_budget(&CLIENT_ADDRESS_ERRORS) else {
            return;
        };
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            lines_suppressed = suppressed,
            header = self.header,
            header.length = self.length,
            reason = self.reason
        );
    }
}

/// A connection refused with `--proxy-protocol`: no valid PROXY header, or
/// one from a peer outside `--trusted-proxy`.
#[derive(Debug)]
pub struct ProxyHeaderRefused<'a> {
    pub peer: std::net::SocketAddr,
    pub reason: &'static str,
    pub metrics: &'a Metrics,
}

impl ProxyHeaderRefused<'_> {
    pub const MESSAGE: &'static str =
        "connection refused: no valid PROXY protocol header from a trusted proxy";
}

impl InternalEvent for ProxyHeaderRefused<'_> {
    fn emit(self) {
        self.metrics
            .client_address_error("proxy-protocol", self.reason);
        connection_closed(
            Self::MESSAGE,
            &CLIENT_ADDRESS_ERRORS,
            self.peer,
            self.reason,
        );
    }
}

/// The line of a connection closed before any HTTP: who, and why.
fn connection_closed(
    message: &'static str,
    budget: &'static LazyLock<Mutex<LineBudget>>,
    peer: std::net::SocketAddr,
    reason: &str,
) {
    let Some(suppressed) = process_budget(budget) else {
        return;
    };
    tracing::warn!(
        target: HTTP,
        message,
        lines_suppressed = suppressed,
        network.peer.address = %peer.ip(),
        reason
    );
}

/// A connection to the TLS listener that did not complete its handshake
/// (a plain-HTTP client, an unknown CA at the client, a scanner).
#[derive(Debug)]
pub struct TlsHandshakeFailed<'a> {
    pub peer: std::net::SocketAddr,
    pub reason: &'a str,
    pub metrics: &'a Metrics,
}

impl TlsHandshakeFailed<'_> {
    pub const MESSAGE: &'static str = "TLS handshake failed; connection closed";
}

impl InternalEvent for TlsHandshakeFailed<'_> {
    fn emit(self) {
        self.metrics
            .tls_handshake_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        connection_closed(Self::MESSAGE, &TLS_REFUSALS, self.peer, self.reason);
    }
}

/// The certificate and key were read again (SIGHUP).
#[derive(Debug)]
pub struct TlsReloaded<'a> {
    pub cert: &'a std::path::Path,
}

impl TlsReloaded<'_> {
    pub const MESSAGE: &'static str = "TLS certificate reloaded";
}

impl InternalEvent for TlsReloaded<'_> {
    fn emit(self) {
        tracing::info!(target: HTTP, message = Self::MESSAGE, cert = %self.cert.display());
    }
}

/// The files did not load on SIGHUP: the certificate in use stays.
#[derive(Debug)]
pub struct TlsReloadFailed<'a> {
    pub error: &'a crate::tls::TlsError,
}

impl TlsReloadFailed<'_> {
    pub const MESSAGE: &'static str = "TLS reload failed; the certificate in use stays";
}

impl InternalEvent for TlsReloadFailed<'_> {
    fn emit(self) {
        tracing::error!(target: HTTP, message = Self::MESSAGE, error = %self.error);
    }
}

/// An HTTP request answered with a 4xx or 5xx status.
#[derive(Debug)]
pub struct HttpRequestRefused<'a> {
    pub status: u16,
    pub route: &'a str,
}

impl HttpRequestRefused<'_> {
    pub const MESSAGE: &'static str = "request refused";
}

impl InternalEvent for HttpRequestRefused<'_> {
    /// 404s (scanners, typos) at debug: not worth a line each by default.
    fn emit(self) {
        if self.status == 404 {
            tracing::debug!(
                target: HTTP,
                message = Self::MESSAGE,
                status = self.status,
                route = %self.route
            );
            return;
        }
        let Some(suppressed) = process_budget(&HTTP_REFUSALS) else {
            return;
        };
        tracing::info!(
            target: HTTP,
            message = Self::MESSAGE,
            status = self.status,
            route = %self.route,
            lines_suppressed = suppressed
        );
    }
}

/// Why an upgrade was refused; the `reason` label of
/// `wstrace_upgrades_rejected_total`.
#[derive(Debug)]
pub enum Refusal {
    OriginNotAllowed,
    /// The JWT's problem (`missing`, `expired`, …), never the token.
    BadToken {
        code: &'static str,
    },
    ConnectionLimit {
        limit: usize,
    },
    /// `--max-sessions-per-ip` reached for the client's address.
    PerIpLimit {
        limit: usize,
    },
    /// `--max-sessions-per-user` reached for the token's user.
    PerUserLimit {
        limit: usize,
    },
}

/// An upgrade refused, for one of the [`Refusal`] reasons.
#[derive(Debug)]
pub struct UpgradeRefused<'a> {
    pub refusal: Refusal,
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
}

impl UpgradeRefused<'_> {
    pub const ORIGIN_MESSAGE: &'static str = "upgrade refused: origin not allowed";
    pub const TOKEN_MESSAGE: &'static str = "upgrade refused: bad token";
    pub const LIMIT_MESSAGE: &'static str = "upgrade refused: connection limit reached";
    pub const PER_IP_MESSAGE: &'static str = "upgrade refused: sessions per address limit reached";
    pub const PER_USER_MESSAGE: &'static str = "upgrade refused: sessions per user limit reached";
}

impl InternalEvent for UpgradeRefused<'_> {
    fn emit(self) {
        let metrics = self.metrics;
        let reason = match &self.refusal {
            Refusal::OriginNotAllowed => "origin",
            Refusal::BadToken { .. } => "auth",
            Refusal::ConnectionLimit { .. } => "connection_limit",
            Refusal::PerIpLimit { .. } => "per_ip_limit",
            Refusal::PerUserLimit { .. } => "per_user_limit",
        };
        metrics.upgrade_rejected(reason);
        let Some(suppressed) = process_budget(&UPGRADE_REFUSALS) else {
            return;
        };
        match self.refusal {
            Refusal::OriginNotAllowed => tracing::warn!(
                target: HTTP,
                message = Self::ORIGIN_MESSAGE,
                lines_suppressed = suppressed
            ),
            Refusal::BadToken { code } => tracing::warn!(
                target: HTTP,
                message = Self::TOKEN_MESSAGE,
                reason = code,
                lines_suppressed = suppressed
            ),
            Refusal::ConnectionLimit { limit } => tracing::warn!(
                target: HTTP,
                message = Self::LIMIT_MESSAGE,
                limit,
                lines_suppressed = suppressed
            ),
            Refusal::PerIpLimit { limit } => tracing::warn!(
                target: HTTP,
                message = Self::PER_IP_MESSAGE,
                limit,
                lines_suppressed = suppressed
            ),
            Refusal::PerUserLimit { limit } => tracing::warn!(
                target: HTTP,
                message = Self::PER_USER_MESSAGE,
                limit,
                lines_suppressed = suppressed
            ),
        }
    }
}

/// A TCP connection refused at accept: its address already holds
/// `--max-sessions-per-ip` connections (plain HTTP or sessions). Counted
/// as an upgrade rejection with reason `per_ip_connections`.
#[derive(Debug)]
pub struct ConnectionRefused<'a> {
    pub peer: std::net::SocketAddr,
    pub limit: usize,
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
}

impl ConnectionRefused<'_> {
    pub const MESSAGE: &'static str = "connection refused: too many from this address";
}

impl InternalEvent for ConnectionRefused<'_> {
    fn emit(self) {
        self.metrics.upgrade_rejected("per_ip_connections");
        let Some(suppressed) = process_budget(&CONNECTION_REFUSALS) else {
            return;
        };
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            net.peer.ip = %self.peer.ip(),
            limit = self.limit,
            lines_suppressed = suppressed
        );
    }
}

/// A request for a `Host` name the server is not for (DNS rebinding);
/// counted as an upgrade rejection with reason `host`.
#[derive(Debug)]
pub struct HostRefused<'a> {
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
    pub path: &'a str,
}

impl HostRefused<'_> {
    pub const MESSAGE: &'static str = "request refused: Host not allowed (see --allowed-host)";
}

impl InternalEvent for HostRefused<'_> {
    fn emit(self) {
        let metrics = self.metrics;
        metrics.upgrade_rejected("host");
        let Some(suppressed) = process_budget(&HOST_REFUSALS) else {
            return;
        };
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            url.path = %self.path,
            lines_suppressed = suppressed
        );
    }
}

/// An admin request without the right bearer token.
#[derive(Debug)]
pub struct AdminTokenRefused;

impl AdminTokenRefused {
    pub const MESSAGE: &'static str = "admin request refused: missing or wrong token";
}

impl InternalEvent for AdminTokenRefused {
    fn emit(self) {
        if let Some(suppressed) = process_budget(&ADMIN_REFUSALS) {
            tracing::warn!(target: ADMIN, message = Self::MESSAGE, lines_suppressed = suppressed);
        }
    }
}

/// An operator closed a session (on this instance, or on the one that holds
/// it when `forwarded_to` names another).
#[derive(Debug)]
pub struct AdminClosedSession<'a> {
    pub session_id: uuid::Uuid,
    pub code: u16,
    /// The instance the close was handed to, when the session is elsewhere.
    pub forwarded_to: Option<&'a str>,
    /// The request was made on another instance and reached this one.
    pub from_elsewhere: bool,
}

impl AdminClosedSession<'_> {
    pub const MESSAGE: &'static str = "admin closed session";
    pub const FORWARDED_MESSAGE: &'static str = "admin close forwarded";
    pub const REMOTE_MESSAGE: &'static str =
        "admin closed session (request made on another instance)";
}

impl InternalEvent for AdminClosedSession<'_> {
    fn emit(self) {
        let session_id = self.session_id;
        let code = self.code;
        match (self.forwarded_to, self.from_elsewhere) {
            (Some(instance), _) => tracing::info!(
                target: ADMIN,
            message = Self::MESSAGE,
                %session_id,
                code,
                on_instance = %instance,
                message = Self::FORWARDED_MESSAGE
            ),
            (None, true) => {
                tracing::info!(target: CLUSTER, %session_id, code, message = Self::REMOTE_MESSAGE)
            }
            (None, false) => {
                tracing::info!(target: ADMIN, %session_id, code, message = Self::MESSAGE)
            }
        }
    }
}

/// `POST /api/cleanup` closed the sessions idle for long enough.
#[derive(Debug)]
pub struct AdminCleanup {
    pub closed: usize,
    pub idle_s: u64,
}

impl AdminCleanup {
    pub const MESSAGE: &'static str = "admin cleanup";
}

impl InternalEvent for AdminCleanup {
    fn emit(self) {
        tracing::info!(
            target: ADMIN,
            closed = self.closed,
            idle_s = self.idle_s
        );
    }
}

/// In the touched session's own trace (inside its `ws.admin` span): an
/// admin request acted on this session; the link leads to the request.
#[derive(Debug)]
pub struct AdminTouchedSession<'a> {
    pub action: &'static str,
    pub link: &'a opentelemetry::trace::SpanContext,
}

impl AdminTouchedSession<'_> {
    pub const MESSAGE: &'static str = "admin request touched this session";
}

impl InternalEvent for AdminTouchedSession<'_> {
    fn emit(self) {
        tracing::info!(
            target: ADMIN,
            message = Self::MESSAGE,
            admin.action = self.action,
            link.trace_id = %self.link.trace_id(),
            link.span_id = %self.link.span_id()
        );
    }
}

/// The upgrade's HTTP side was answered (101) but the connection never
/// became a WebSocket (the client left, or hyper gave it up).
pub struct UpgradeFailed<'a> {
    pub error: &'a dyn Display,
}

impl UpgradeFailed<'_> {
    pub const MESSAGE: &'static str = "websocket upgrade failed";
    /// A connection the server did not accept itself: a bug, not a client.
    pub const NOT_OURS_MESSAGE: &'static str =
        "websocket upgrade failed: not a connection of this server";
}

impl InternalEvent for UpgradeFailed<'_> {
    fn emit(self) {
        tracing::warn!(target: HTTP, error = %self.error, message = Self::MESSAGE);
    }
}

/// The upgraded connection is not one this server's accept loop made.
#[derive(Debug)]
pub struct UpgradeNotOurs;

impl InternalEvent for UpgradeNotOurs {
    fn emit(self) {
        tracing::error!(target: HTTP, message = UpgradeFailed::NOT_OURS_MESSAGE);
    }
}
