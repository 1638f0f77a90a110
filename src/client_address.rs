//! Who the client is, behind proxies: the TCP peer, unless the peer is a
//! trusted proxy, in which case the client is read from `Forwarded`
//! (RFC 7239) or else `X-Forwarded-For`, walking from the right and
//! skipping trusted hops. The rightmost untrusted address is the client:
//! every address to its left was written by a party we do not trust, so
//! the leftmost is never taken on its word.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::limits::MAX_FORWARDED_HEADER_BYTES;

/// The `--trusted-proxy` ranges. Empty: every forwarding header is ignored
/// and the client is the TCP peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// One `--trusted-proxy` value: a CIDR range (`10.0.0.0/8`, `fd00::/8`)
/// or a single address.
pub fn parse_range(range: &str) -> Result<IpNet, String> {
    let range = range.trim();
    IpNet::from_str(range)
        .or_else(|_| IpAddr::from_str(range).map(IpNet::from))
        .map_err(|_| format!("{range:?} is not a CIDR range or an IP address"))
}

impl TrustedProxies {
    pub fn new(ranges: Vec<IpNet>) -> Self {
        Self(ranges)
    }

    /// Parses every range (see [`parse_range`]); empty entries are skipped.
    pub fn parse<S: AsRef<str>>(ranges: &[S]) -> Result<Self, String> {
        ranges
            .iter()
            .map(|range| range.as_ref())
            .filter(|range| !range.trim().is_empty())
            .map(parse_range)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client a connection's PROXY header named (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct ProxiedClient(pub SocketAddr);

/// Where the client's address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// The TCP peer (no trusted proxy in front, or no usable header).
    Peer,
    /// A PROXY protocol header from a trusted load balancer.
    ProxyProtocol,
    Forwarded,
    XForwardedFor,
}

/// The client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    pub ip: IpAddr,
    /// Known when the client is the TCP peer, or its proxy said it.
    pub port: Option<u16>,
    pub source: AddressSource,
}

/// A forwarding header from a trusted proxy that could not be read: the
/// request's client is then the proxy itself (never a guess).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderIgnored {
    pub header: &'static str,
    pub reason: &'static str,
    pub length: usize,
}

pub const FORWARDED: &str = "forwarded";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client of a request that arrived from `peer`: see the module
/// comment. `proxied` is the source a PROXY protocol header gave (already
/// checked to come from a trusted peer); the headers are then the client's
/// own and not read.
pub fn resolve(
    peer: SocketAddr,
    proxied: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> (ClientAddress, Option<HeaderIgnored>) {
    if let Some(source) = proxied {
        let client = ClientAddress {
            ip: canonical(source.ip()),
            port: Some(source.port()),
            source: AddressSource::ProxyProtocol,
        };
        return (client, None);
    }
    let direct = ClientAddress {
        ip: canonical(peer.ip()),
        port: Some(peer.port()),
        source: AddressSource::Peer,
    };
    if !trusted.contains(peer.ip()) {
        return (direct, None);
    }
    let (name, source, parse): (_, _, HopParser) = if headers.contains_key(FORWARDED) {
        (FORWARDED, AddressSource::Forwarded, forwarded_hops)
    } else if headers.contains_key(X_FORWARDED_FOR) {
        (
            X_FORWARDED_FOR,
            AddressSource::XForwardedFor,
            x_forwarded_for_hops,
        )
    } else {
        return (direct, None);
    };
    let ignored = |reason| HeaderIgnored {
        header: name,
        reason,
        length: header_length(headers, name),
    };
    let Some(value) = joined(headers, name) else {
        return (direct, Some(ignored("too long or not text")));
    };
    let Some(hops) = parse(&value) else {
        return (direct, Some(ignored("malformed")));
    };
    let client =
        rightmost_untrusted(&hops, trusted).map(|(ip, port)| ClientAddress { ip, port, source });
    (client.unwrap_or(direct), None)
}

/// Reads one header's hops, or `None` if it is malformed.
type HopParser = fn(&str) -> Option<Vec<Hop>>;

/// One hop a proxy recorded: an address, or an identifier that hides it
/// (RFC 7239's `unknown` and `_obfuscated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Address(IpAddr, Option<u16>),
    Hidden,
}

/// Walks from the right, past trusted proxies. A hidden hop ends the walk
/// at the proxy that wrote it (the nearest address we can vouch for). If
/// every hop is trusted, the leftmost is as far as can be seen.
fn rightmost_untrusted(hops: &[Hop], trusted: &TrustedProxies) -> Option<(IpAddr, Option<u16>)> {
    let mut nearest = None;
    for hop in hops.iter().rev() {
        match *hop {
            Hop::Address(ip, port) if trusted.contains(ip) => nearest = Some((ip, port)),
            Hop::Address(ip, port) => return Some((ip, port)),
            Hop::Hidden => return nearest,
        }
    }
    nearest
}

/// Every value of the header, joined as one list (RFC 9110 5.3), if the
/// whole is text within the bound.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    if header_length(headers, name) > MAX_FORWARDED_HEADER_BYTES {
        return None;
    }
    let values = headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().ok())
        .collect::<Option<Vec<_>>>()?;
    Some(values.join(","))
}

fn header_length(headers: &HeaderMap, name: &str) -> usize {
    headers.get_all(name).iter().map(|v| v.len()).sum()
}

/// `X-Forwarded-For: client, proxy1, proxy2`: bare addresses only (no
/// ports: there is no standard for them, and `2001:db8::1:80` is itself a
/// valid IPv6 address).
fn x_forwarded_for_hops(value: &str) -> Option<Vec<Hop>> {
    value
        .split(',')
        .map(|hop| {
            IpAddr::from_str(hop.trim())
                .ok()
                .map(|ip| Hop::Address(canonical(ip), None))
        })
        .collect()
}

/// `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"`: the
/// `for` parameter of each element (RFC 7239 section 4); an element
/// without one is malformed for our purpose.
fn forwarded_hops(value: &str) -> Option<Vec<Hop>> {
    split_outside_quotes(value, ',')
        .into_iter()
        .map(|element| {
            let mut node = None;
            for pair in split_outside_quotes(element, ';') {
                let (name, value) = pair.split_once('=')?;
                if name.trim().eq_ignore_ascii_case("for") {
                    node = Some(forwarded_node(unquote(value.trim())?)?);
                }
            }
            node
        })
        .collect()
}

/// A `for` node (RFC 7239 section 6): `192.0.2.43`, `192.0.2.43:47011`,
/// `[2001:db8::17]`, `[2001:db8::17]:4711`, `unknown`, `_hidden`.
fn forwarded_node(node: &str) -> Option<Hop> {
    if node.eq_ignore_ascii_case("unknown") || node.starts_with('_') {
        return Some(Hop::Hidden);
    }
    let (host, port) = match node.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let v6: std::net::Ipv6Addr = v6.parse().ok()?;
            (IpAddr::V6(v6), after.strip_prefix(':'))
        }
        None => match node.split_once(':') {
            Some((v4, port)) => (IpAddr::V4(v4.parse().ok()?), Some(port)),
            None => (IpAddr::V4(node.parse().ok()?), None),
        },
    };
    let port = match port {
        // An obfuscated port (`_abc`) hides the port, not the address.
        Some(port) if port.starts_with('_') => None,
        Some(port) => Some(port.parse().ok()?),
        None if node.starts_with('[') && !node.ends_with(']') => return None,
        None => None,
    };
    Some(Hop::Address(canonical(host), port))
}

/// A token, or a quoted string without its quotes (quoted-pairs undone).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            // Addresses never need a quoted-pair; refuse rather than guess.
            (!inner.contains('\\') && !inner.contains('"')).then_some(inner)
        }
        None => (!value.is_empty() && !value.contains(['"', '[', ']'])).then_some(value),
    }
}

/// Splits at `separator` where it is not inside a quoted string.
fn split_outside_quotes(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (at, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(value[start..at].trim());
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts
}

/// An IPv4 client reached over an IPv6 socket (`::ffff:192.0.2.1`) is the
/// IPv4 client: one address, one per-address cap.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(ranges).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn client_of(
        peer: &str,
        pairs: &[(&'static str, &str)],
    ) -> (ClientAddress, Option<HeaderIgnored>) {
        let trusted = trusted(&["10.0.0.0/8", "fd00::/8", "192.168.1.1"]);
        resolve(peer.parse().unwrap(), None, &headers(pairs), &trusted)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_as_cidr_or_single_addresses() {
        let t = trusted(&["10.0.0.0/8", " 192.168.1.1 ", "fd00::/8", ""]);
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("192.168.1.1")));
        assert!(!t.contains(ip("192.168.1.2")));
        assert!(t.contains(ip("fd12::1")));
        assert!(t.contains(ip("::ffff:10.0.0.1")), "mapped IPv4 is IPv4");
        let error = TrustedProxies::parse(&["10.0.0.0/33"]).unwrap_err();
        assert!(error.contains("10.0.0.0/33"), "{error}");
        assert!(TrustedProxies::parse(&["proxy.local"]).is_err());
    }

    #[test]
    fn without_a_trusted_peer_the_headers_change_nothing() {
        let forged = [(X_FORWARDED_FOR, "1.2.3.4"), (FORWARDED, "for=5.6.7.8")];
        let (client, ignored) = client_of("203.0.113.9:5000", &forged);
        assert_eq!(client.ip, ip("203.0.113.9"));
        assert_eq!(client.port, Some(5000));
        assert_eq!(client.source, AddressSource::Peer);
        assert_eq!(ignored, None);
        let none = TrustedProxies::default();
        let (client, _) = resolve(
            "10.0.0.1:1".parse().unwrap(),
            None,
            &headers(&forged),
            &none,
        );
        assert_eq!(client.ip, ip("10.0.0.1"));
    }

    #[test]
    fn a_single_hop_names_the_client() {
        let (client, ignored) = client_of("10.0.0.5:40000", &[(X_FORWARDED_FOR, "198.51.100.7")]);
        assert_eq!((client.ip, client.port), (ip("198.51.100.7"), None));
        assert_eq!(client.source, AddressSource::XForwardedFor);
        assert_eq!(ignored, None);
        let (client, _) = client_of(
            "10.0.0.5:40000",
            &[(FORWARDED, "for=198.51.100.7:4711;proto=https")],
        );
        assert_eq!((client.ip, client.port), (ip("198.51.100.7"), Some(4711)));
        assert_eq!(client.source, AddressSource::Forwarded);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client_never_the_leftmost() {
        // A client that sends its own X-Forwarded-For gets it prepended.
        let xff = [(X_FORWARDED_FOR, "6.6.6.6, 198.51.100.7, 10.1.1.1")];
        assert_eq!(client_of("10.0.0.5:1", &xff).0.ip, ip("198.51.100.7"));
        // Two headers are one list.
        let two = [
            (X_FORWARDED_FOR, "6.6.6.6"),
            (X_FORWARDED_FOR, "198.51.100.7, 10.1.1.1"),
        ];
        assert_eq!(client_of("10.0.0.5:1", &two).0.ip, ip("198.51.100.7"));
        let fwd = [(
            FORWARDED,
            r#"for=6.6.6.6, for="[2001:db8::17]:4711";proto=https, for=10.2.2.2;by=10.0.0.5"#,
        )];
        let (client, _) = client_of("10.0.0.5:1", &fwd);
        assert_eq!((client.ip, client.port), (ip("2001:db8::17"), Some(4711)));
        // Every hop trusted: the leftmost is as far as can be seen.
        assert_eq!(
            client_of("10.0.0.5:1", &[(X_FORWARDED_FOR, "10.9.9.9, 10.1.1.1")])
                .0
                .ip,
            ip("10.9.9.9")
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for() {
        let both = [
            (X_FORWARDED_FOR, "198.51.100.1"),
            (FORWARDED, "for=198.51.100.2"),
        ];
        assert_eq!(client_of("10.0.0.5:1", &both).0.ip, ip("198.51.100.2"));
    }

    #[test]
    fn a_hidden_hop_stops_at_the_proxy_that_wrote_it() {
        let fwd = [(FORWARDED, "for=198.51.100.2, for=unknown, for=10.3.3.3")];
        assert_eq!(client_of("10.0.0.5:1", &fwd).0.ip, ip("10.3.3.3"));
        let fwd = [(FORWARDED, "for=_hidden")];
        let (client, ignored) = client_of("10.0.0.5:1", &fwd);
        assert_eq!(
            (client.ip, client.source),
            (ip("10.0.0.5"), AddressSource::Peer)
        );
        assert_eq!(ignored, None, "a hidden node is valid, not malformed");
    }

    #[test]
    fn malformed_values_are_ignored_and_said() {
        let cases: &[(&'static str, &str)] = &[
            (X_FORWARDED_FOR, "not an address"),
            (X_FORWARDED_FOR, "198.51.100.7, "),
            (X_FORWARDED_FOR, "[2001:db8::1]:8080"),
            (X_FORWARDED_FOR, "198.51.100.7:8080"),
            (FORWARDED, "for=2001:db8::1"),
            (FORWARDED, "for=[2001:db8::1"),
            (FORWARDED, r#"for="[2001:db8::1]:99999""#),
            (FORWARDED, "proto=https"),
            (FORWARDED, "for"),
            (FORWARDED, r#"for="198.51.100.7"#),
        ];
        for &(name, value) in cases {
            let (client, ignored) = client_of("10.0.0.5:1", &[(name, value)]);
            assert_eq!(client.ip, ip("10.0.0.5"), "{name}: {value}");
            let ignored = ignored.unwrap_or_else(|| panic!("{name}: {value} was taken"));
            assert_eq!(
                (ignored.header, ignored.reason),
                (name, "malformed"),
                "{value}"
            );
        }
    }

    #[test]
    fn an_oversize_header_is_not_read() {
        let long = vec!["198.51.100.7"; 1000].join(",");
        let (client, ignored) = client_of("10.0.0.5:1", &[(X_FORWARDED_FOR, &long)]);
        assert_eq!(client.ip, ip("10.0.0.5"));
        let ignored = ignored.unwrap();
        assert_eq!(ignored.reason, "too long or not text");
        assert_eq!(ignored.length, long.len());
    }

    #[test]
    fn a_proxy_protocol_source_is_the_client() {
        let source = "198.51.100.7:5555".parse().unwrap();
        let (client, _) = resolve(
            "10.0.0.5:1".parse().unwrap(),
            Some(source),
            &headers(&[(X_FORWARDED_FOR, "6.6.6.6")]),
            &trusted(&["10.0.0.0/8"]),
        );
        assert_eq!((client.ip, client.port), (ip("198.51.100.7"), Some(5555)));
        assert_eq!(client.source, AddressSource::ProxyProtocol);
    }
}
