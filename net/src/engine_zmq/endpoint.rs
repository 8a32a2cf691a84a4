//! Where one engine rank's ZeroMQ sockets are, and which side binds.
//!
//! An engine's KV-event config names one endpoint for its PUB socket (`tcp://*:5557`) and
//! one for its replay ROUTER (`tcp://*:5600`); DP rank `r` adds `r` to both ports. The
//! engine binds its PUB when the host is a wildcard (`*`, or `0.0.0.0` for SGLang) and
//! connects out otherwise; the replay ROUTER always binds. The router side mirrors that:
//!
//! | engine endpoint        | engine PUB | router config ([`EngineEndpoint`])                    |
//! |------------------------|------------|-------------------------------------------------------|
//! | `tcp://*:5557`         | binds      | [`EngineEndpoint::connect`]`("tcp://10.0.0.5:5557")`   |
//! | `tcp://10.0.0.9:5557`  | connects   | [`EngineEndpoint::bind`]`("tcp://10.0.0.9:5557")`      |
//!
//! ([`EngineEndpoint::from_engine_setting`] does that translation from the engine's own
//! string and its host.) Replay endpoints are always [`EndpointMode::Connect`] on the router.
//!
//! Data: a [`ZmqAddress`] (`tcp://host:port` with an IPv4 address, a bracketed IPv6 address
//! or a DNS name, or `ipc://path`, a Unix-domain socket) and an [`EndpointMode`]. Parsing is
//! strict and every rejection is a typed [`EndpointError`]: no scheme or an unknown one, no
//! or a bad port, a bad host, a wildcard host to connect to, port 0 to connect to, an empty
//! or abstract (`@name`) ipc path. A bound wildcard host `*` is stored as `0.0.0.0` (the
//! ZeroMQ crate resolves hosts as names and does not know `*`).
//!
//! Per rank: [`EngineEndpoint::for_rank`] adds the DP rank to the port (overflow checked;
//! port 0, "any free port", stays 0). An ipc path has no port: rank 0 keeps it, other ranks
//! are an error (vLLM derives per-rank endpoints only for tcp and inproc).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

/// Longest endpoint string accepted (a DNS name is at most 253 bytes, a Unix socket path
/// at most 107 on Linux; this leaves room for both and keeps error messages short).
pub const MAX_ENDPOINT_LEN: usize = 512;

/// A ZeroMQ transport address: what `zmq_bind` / `zmq_connect` take.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ZmqAddress {
    /// `tcp://host:port`. `host` is an IPv4 address, an IPv6 address (written bracketed in
    /// the string; stored without brackets) or a DNS name.
    Tcp { host: String, port: u16 },
    /// `ipc://path`: a Unix-domain socket at `path`.
    Ipc { path: PathBuf },
}

impl ZmqAddress {
    /// Parses `tcp://host:port` or `ipc://path`. A wildcard host (`*`, `0.0.0.0`, `::`) is
    /// accepted here (meaningful only to bind on); `*` is stored as `0.0.0.0`.
    pub fn parse(input: &str) -> Result<ZmqAddress, EndpointError> {
        if input.len() > MAX_ENDPOINT_LEN {
            return Err(EndpointError::TooLong { len: input.len() });
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(EndpointError::MissingScheme { input: input.to_string() });
        };
        match scheme {
            "tcp" => parse_tcp(input, rest),
            "ipc" => parse_ipc(rest),
            _ => Err(EndpointError::UnsupportedScheme { scheme: scheme.to_string() }),
        }
    }

    /// The TCP port; `None` for ipc.
    pub fn port(&self) -> Option<u16> {
        match self {
            ZmqAddress::Tcp { port, .. } => Some(*port),
            ZmqAddress::Ipc { .. } => None,
        }
    }

    /// Whether this is a TCP address on every interface (`0.0.0.0` or `::`).
    pub fn is_wildcard(&self) -> bool {
        match self {
            ZmqAddress::Tcp { host, .. } => is_wildcard_host(host),
            ZmqAddress::Ipc { .. } => false,
        }
    }

    /// The same address with `offset` added to the port (the DP rank). Port 0 stays 0; ipc
    /// addresses accept only offset 0.
    pub fn with_port_offset(&self, offset: u32) -> Result<ZmqAddress, EndpointError> {
        match self {
            ZmqAddress::Tcp { port: 0, .. } => Ok(self.clone()),
            ZmqAddress::Tcp { host, port } => {
                let shifted = u32::from(*port).checked_add(offset).and_then(|p| u16::try_from(p).ok());
                match shifted {
                    Some(port) => Ok(ZmqAddress::Tcp { host: host.clone(), port }),
                    None => Err(EndpointError::PortOverflow { port: *port, offset }),
                }
            }
            ZmqAddress::Ipc { .. } if offset == 0 => Ok(self.clone()),
            ZmqAddress::Ipc { path } => Err(EndpointError::IpcRankOffset { path: path.clone(), offset }),
        }
    }
}

impl fmt::Display for ZmqAddress {
    /// The string the ZeroMQ crate parses: IPv6 hosts bracketed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZmqAddress::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            ZmqAddress::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            ZmqAddress::Ipc { path } => write!(f, "ipc://{}", path.display()),
        }
    }
}

impl FromStr for ZmqAddress {
    type Err = EndpointError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        ZmqAddress::parse(input)
    }
}

/// Which side of an engine connection the router's socket takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointMode {
    /// The engine binds (its endpoint has a wildcard host); the router connects to the
    /// engine's address. Also every replay endpoint.
    Connect,
    /// The engine connects out to the router's address; the router binds it.
    Bind,
}

/// The router's side of one engine rank's socket: an address and whether to bind or
/// connect it. Parse with [`connect`](Self::connect), [`bind`](Self::bind) or
/// [`from_engine_setting`](Self::from_engine_setting); `FromStr` is `connect`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EngineEndpoint {
    address: ZmqAddress,
    mode: EndpointMode,
}

impl EngineEndpoint {
    /// An endpoint the router connects to: the engine's own address (never a wildcard, never
    /// port 0).
    pub fn connect(input: &str) -> Result<EngineEndpoint, EndpointError> {
        EngineEndpoint::parse(input, EndpointMode::Connect)
    }

    /// An endpoint the router binds (the engine connects to it). A wildcard host binds every
    /// interface; port 0 binds any free port.
    pub fn bind(input: &str) -> Result<EngineEndpoint, EndpointError> {
        EngineEndpoint::parse(input, EndpointMode::Bind)
    }

    /// Parses `input` for `mode` (see [`connect`](Self::connect) and [`bind`](Self::bind)).
    pub fn parse(input: &str, mode: EndpointMode) -> Result<EngineEndpoint, EndpointError> {
        let address = ZmqAddress::parse(input)?;
        EngineEndpoint::new(address, mode)
    }

    /// An endpoint from an already parsed address, checked for `mode` as
    /// [`parse`](Self::parse) does.
    pub fn new(address: ZmqAddress, mode: EndpointMode) -> Result<EngineEndpoint, EndpointError> {
        if mode == EndpointMode::Connect {
            if address.is_wildcard() {
                return Err(EndpointError::WildcardConnect { address: address.to_string() });
            }
            if address.port() == Some(0) {
                return Err(EndpointError::PortZeroConnect);
            }
        }
        Ok(EngineEndpoint { address, mode })
    }

    /// An endpoint without the connect checks, for addresses known to be fine (bound ones).
    pub(crate) fn from_parts(address: ZmqAddress, mode: EndpointMode) -> EngineEndpoint {
        EngineEndpoint { address, mode }
    }

    /// The router's endpoint for an engine configured with `engine_endpoint` (the string in
    /// its `--kv-events-config`) running on `engine_host`: a wildcard host means the engine
    /// binds, so the router connects to `engine_host` at that port; any other host is where
    /// the engine connects to, so the router binds it. An ipc endpoint is bound by the
    /// engine (vLLM binds ipc paths), so the router connects to the same path.
    pub fn from_engine_setting(engine_endpoint: &str, engine_host: &str) -> Result<EngineEndpoint, EndpointError> {
        let address = ZmqAddress::parse(engine_endpoint)?;
        match address {
            ZmqAddress::Tcp { ref host, port } if is_wildcard_host(host) => {
                let host = parse_host(engine_host)?;
                EngineEndpoint::new(ZmqAddress::Tcp { host, port }, EndpointMode::Connect)
            }
            ZmqAddress::Tcp { .. } => EngineEndpoint::new(address, EndpointMode::Bind),
            ZmqAddress::Ipc { .. } => EngineEndpoint::new(address, EndpointMode::Connect),
        }
    }

    /// The endpoint of DP rank `offset` of this engine (base port + rank), overflow
    /// checked. See [`ZmqAddress::with_port_offset`].
    pub fn for_rank(&self, offset: u32) -> Result<EngineEndpoint, EndpointError> {
        Ok(EngineEndpoint { address: self.address.with_port_offset(offset)?, mode: self.mode })
    }

    /// The address.
    pub fn address(&self) -> &ZmqAddress {
        &self.address
    }

    /// Bind or connect.
    pub fn mode(&self) -> EndpointMode {
        self.mode
    }
}

impl fmt::Display for EngineEndpoint {
    /// `tcp://10.0.0.5:5557` for connect, `bind tcp://0.0.0.0:5557` for bind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            EndpointMode::Connect => write!(f, "{}", self.address),
            EndpointMode::Bind => write!(f, "bind {}", self.address),
        }
    }
}

impl FromStr for EngineEndpoint {
    type Err = EndpointError;

    /// [`EngineEndpoint::connect`].
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        EngineEndpoint::connect(input)
    }
}

/// Why an endpoint string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// Longer than [`MAX_ENDPOINT_LEN`].
    TooLong { len: usize },
    /// No `scheme://`.
    MissingScheme { input: String },
    /// A scheme other than `tcp` and `ipc` (`inproc`, `pgm`, ... have no meaning across
    /// processes or are not implemented by the ZeroMQ crate).
    UnsupportedScheme { scheme: String },
    /// `tcp://` without `:port`.
    MissingPort { input: String },
    /// The port is not a number from 0 to 65535.
    InvalidPort { port: String },
    /// The host is empty, has characters no address or DNS name has, or is an unbracketed
    /// IPv6 address or a ZeroMQ `interface;host` form.
    InvalidHost { host: String },
    /// A wildcard host (`*`, `0.0.0.0`, `::`) given to connect to: give the engine's
    /// address instead.
    WildcardConnect { address: String },
    /// Port 0 given to connect to.
    PortZeroConnect,
    /// `ipc://` with an empty path.
    EmptyIpcPath,
    /// `ipc://@name`: Linux abstract sockets are not supported by the ZeroMQ crate.
    AbstractIpc { name: String },
    /// Base port plus rank offset exceeds 65535.
    PortOverflow { port: u16, offset: u32 },
    /// An ipc path has no port to add a rank to.
    IpcRankOffset { path: PathBuf, offset: u32 },
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::TooLong { len } => {
                write!(f, "endpoint of {len} bytes is longer than the {MAX_ENDPOINT_LEN} allowed")
            }
            EndpointError::MissingScheme { input } => {
                write!(f, "endpoint {input:?} has no scheme (expected tcp://host:port or ipc://path)")
            }
            EndpointError::UnsupportedScheme { scheme } => {
                write!(f, "endpoint scheme {scheme:?} is not supported (only tcp and ipc)")
            }
            EndpointError::MissingPort { input } => write!(f, "tcp endpoint {input:?} has no :port"),
            EndpointError::InvalidPort { port } => write!(f, "port {port:?} is not a number from 0 to 65535"),
            EndpointError::InvalidHost { host } => {
                write!(f, "host {host:?} is not an IPv4 address, a bracketed IPv6 address, a DNS name or *")
            }
            EndpointError::WildcardConnect { address } => write!(
                f,
                "cannot connect to the wildcard address {address}: give the engine host's address \
                 (a wildcard means the engine binds)"
            ),
            EndpointError::PortZeroConnect => write!(f, "cannot connect to port 0"),
            EndpointError::EmptyIpcPath => write!(f, "ipc endpoint has an empty path"),
            EndpointError::AbstractIpc { name } => {
                write!(f, "abstract ipc socket {name:?} is not supported (use a filesystem path)")
            }
            EndpointError::PortOverflow { port, offset } => {
                write!(f, "port {port} plus rank offset {offset} exceeds 65535")
            }
            EndpointError::IpcRankOffset { path, offset } => write!(
                f,
                "ipc endpoint {} has no port to add rank offset {offset} to: give each rank its own path",
                path.display()
            ),
        }
    }
}

impl std::error::Error for EndpointError {}

/// `0.0.0.0` and `::` (after `*` was mapped to `0.0.0.0`).
fn is_wildcard_host(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_unspecified(),
        Err(_) => false,
    }
}

fn parse_tcp(input: &str, rest: &str) -> Result<ZmqAddress, EndpointError> {
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(EndpointError::MissingPort { input: input.to_string() });
    };
    // An unbracketed IPv6 address splits at its own last colon; its "host" still has one.
    let port_value =
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) { port.parse::<u16>().ok() } else { None };
    let Some(port) = port_value else {
        return Err(EndpointError::InvalidPort { port: port.to_string() });
    };
    Ok(ZmqAddress::Tcp { host: parse_host(host)?, port })
}

/// A host as stored in [`ZmqAddress::Tcp`]: `*` -> `0.0.0.0`, `[v6]` -> `v6`, IPv4 and DNS
/// names as they are.
fn parse_host(host: &str) -> Result<String, EndpointError> {
    let invalid = || EndpointError::InvalidHost { host: host.to_string() };
    if host == "*" {
        return Ok(Ipv4Addr::UNSPECIFIED.to_string());
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(invalid)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| invalid())?;
        return Ok(ip.to_string());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(host.to_string());
    }
    // A DNS name: labels of letters, digits, '-' and '_' (container names), dot separated.
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid_name {
        Ok(host.to_string())
    } else {
        Err(invalid())
    }
}

fn parse_ipc(rest: &str) -> Result<ZmqAddress, EndpointError> {
    if rest.is_empty() {
        return Err(EndpointError::EmptyIpcPath);
    }
    if rest.starts_with('@') {
        return Err(EndpointError::AbstractIpc { name: rest.to_string() });
    }
    Ok(ZmqAddress::Ipc { path: PathBuf::from(rest) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_hosts() {
        let a = ZmqAddress::parse("tcp://10.0.0.5:5557").unwrap();
        assert_eq!(a, ZmqAddress::Tcp { host: "10.0.0.5".into(), port: 5557 });
        assert_eq!(a.to_string(), "tcp://10.0.0.5:5557");
        let a = ZmqAddress::parse("tcp://[::1]:5557").unwrap();
        assert_eq!(a, ZmqAddress::Tcp { host: "::1".into(), port: 5557 });
        assert_eq!(a.to_string(), "tcp://[::1]:5557");
        let a = ZmqAddress::parse("tcp://engine-0.svc.cluster.local:5557").unwrap();
        assert_eq!(a.port(), Some(5557));
        assert_eq!(ZmqAddress::parse("tcp://*:5557").unwrap().to_string(), "tcp://0.0.0.0:5557");
        assert!(ZmqAddress::parse("tcp://*:5557").unwrap().is_wildcard());
        assert!(ZmqAddress::parse("tcp://[::]:5557").unwrap().is_wildcard());
    }

    #[test]
    fn rejects_bad_strings() {
        use EndpointError::*;
        let err = |s: &str| ZmqAddress::parse(s).unwrap_err();
        assert!(matches!(err("10.0.0.5:5557"), MissingScheme { .. }));
        assert!(matches!(err("inproc://x"), UnsupportedScheme { .. }));
        assert!(matches!(err("tcp://host"), MissingPort { .. }));
        assert!(matches!(err("tcp://host:"), InvalidPort { .. }));
        assert!(matches!(err("tcp://host:65536"), InvalidPort { .. }));
        assert!(matches!(err("tcp://host:+1"), InvalidPort { .. }));
        assert!(matches!(err("tcp://:5557"), InvalidHost { .. }));
        assert!(matches!(err("tcp://::1:5557"), InvalidHost { .. }));
        assert!(matches!(err("tcp://eth0;10.0.0.1:5557"), InvalidHost { .. }));
        assert!(matches!(err("tcp://[::1:5557"), InvalidHost { .. }));
        assert!(matches!(err("tcp://a b:1"), InvalidHost { .. }));
        assert!(matches!(err("ipc://"), EmptyIpcPath));
        assert!(matches!(err("ipc://@abstract"), AbstractIpc { .. }));
        assert!(matches!(err(&"x".repeat(MAX_ENDPOINT_LEN + 1)), TooLong { .. }));
        assert!(matches!(EngineEndpoint::connect("tcp://*:5557"), Err(WildcardConnect { .. })));
        assert!(matches!(EngineEndpoint::connect("tcp://0.0.0.0:5557"), Err(WildcardConnect { .. })));
        assert!(matches!(EngineEndpoint::connect("tcp://host:0"), Err(PortZeroConnect)));
        for e in [err("tcp://host"), err("ipc://"), err("inproc://x")] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn per_rank_ports() {
        let e = EngineEndpoint::connect("tcp://10.0.0.5:5557").unwrap();
        assert_eq!(e.for_rank(0).unwrap(), e);
        assert_eq!(e.for_rank(3).unwrap().address().port(), Some(5560));
        assert_eq!(e.for_rank(3).unwrap().mode(), EndpointMode::Connect);
        let top = EngineEndpoint::connect("tcp://h:65534").unwrap();
        assert_eq!(top.for_rank(1).unwrap().address().port(), Some(65535));
        assert_eq!(top.for_rank(2), Err(EndpointError::PortOverflow { port: 65534, offset: 2 }));
        assert!(top.for_rank(u32::MAX).is_err());
        let any = EngineEndpoint::bind("tcp://127.0.0.1:0").unwrap();
        assert_eq!(any.for_rank(5).unwrap().address().port(), Some(0));
        let ipc = EngineEndpoint::connect("ipc:///tmp/kv.sock").unwrap();
        assert_eq!(ipc.for_rank(0).unwrap(), ipc);
        assert!(matches!(ipc.for_rank(1), Err(EndpointError::IpcRankOffset { .. })));
    }

    #[test]
    fn engine_settings() {
        let e = EngineEndpoint::from_engine_setting("tcp://*:5557", "10.0.0.5").unwrap();
        assert_eq!(e, EngineEndpoint::connect("tcp://10.0.0.5:5557").unwrap());
        let e = EngineEndpoint::from_engine_setting("tcp://0.0.0.0:5557", "[fd00::5]").unwrap();
        assert_eq!(e.to_string(), "tcp://[fd00::5]:5557");
        let e = EngineEndpoint::from_engine_setting("tcp://10.0.0.9:5557", "10.0.0.5").unwrap();
        assert_eq!(e.mode(), EndpointMode::Bind);
        assert_eq!(e.to_string(), "bind tcp://10.0.0.9:5557");
        assert!(EngineEndpoint::from_engine_setting("tcp://*:5557", "*").is_err());
    }
}
