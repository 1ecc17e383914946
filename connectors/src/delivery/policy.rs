//! What an action written inline in a rule may reach: the operator's policy.
//!
//! A rule's author is not trusted with the machine weir runs on. By default an inline
//! destination may not write files outside the output directory, send requests to
//! link-local addresses (the cloud metadata services live there) or to weir's own
//! listeners, set transport options that read local files, load code or turn off
//! certificate checks, or fall back to weir's own (ambient) cloud credentials. Each
//! refusal names what it refused and the setting that would allow it.
//!
//! The sinks check their configuration against the policy when a rule is submitted
//! ([`crate::delivery::SinkConfig::check_policy`]); the webhook checks each rendered URL
//! again, and its HTTP client resolves no name to a refused address ([`Resolver`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use weir_engine::{Classify, ErrorClass};

/// The operator's policy on inline destinations.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Directories below which `file://` destinations may write (the output directory
    /// and `allow_file_dirs`).
    pub file_dirs: Vec<PathBuf>,
    /// Whether destinations may be link-local addresses (`allow_link_local`).
    pub allow_link_local: bool,
    /// weir's own listeners (the HTTP API, the embedded broker), which webhooks may not
    /// reach unless `allow_weir_listeners`.
    pub weir_listeners: Vec<SocketAddr>,
    pub allow_weir_listeners: bool,
    /// librdkafka properties allowed beyond the built-in list (`allow_kafka_properties`).
    pub kafka_properties: BTreeSet<String>,
    /// Object-store options allowed beyond the built-in list (`allow_store_options`), by
    /// their canonical name (`aws_metadata_endpoint`) or any alias.
    pub store_options: BTreeSet<String>,
    /// Whether cloud destinations without credentials of their own may use weir's
    /// (environment variables, instance metadata) (`allow_ambient_credentials`).
    pub allow_ambient_credentials: bool,
}

/// Why the policy refused a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAllowed(pub String);

impl Classify for NotAllowed {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

impl Policy {
    /// A policy that allows everything: for tests of the sinks themselves.
    pub fn allow_all() -> Self {
        Self {
            file_dirs: vec![PathBuf::from("/")],
            allow_link_local: true,
            weir_listeners: Vec::new(),
            allow_weir_listeners: true,
            kafka_properties: BTreeSet::new(),
            store_options: BTreeSet::new(),
            allow_ambient_credentials: true,
        }
    }

    /// Whether a `file://` destination may write to `dir` (absolute, without `.` or `..`).
    pub fn check_file_dir(&self, dir: &Path) -> Result<(), NotAllowed> {
        // `components` drops a `.` inside a path: `/out/./x` is `/out/x`.
        let lexical = dir.is_absolute()
            && dir
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !lexical {
            return Err(NotAllowed(format!(
                "file:// path '{}' must be absolute and must not contain '.' or '..'",
                dir.display()
            )));
        }
        if self.file_dirs.iter().any(|root| dir.starts_with(root)) {
            return Ok(());
        }
        let roots: Vec<String> = self
            .file_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        Err(NotAllowed(format!(
            "file:// destination '{}' is outside the directories rules may write to ({}); \
             the operator setting allow_file_dirs (--allow-file-dirs) would allow it",
            dir.display(),
            roots.join(", ")
        )))
    }

    /// Whether a destination at `ip` is allowed, whatever the port.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), NotAllowed> {
        if !self.allow_link_local && is_link_local(ip) {
            return Err(NotAllowed(format!(
                "address {ip} is link-local (where cloud metadata services answer); the \
                 operator setting allow_link_local (--allow-link-local) would allow it"
            )));
        }
        Ok(())
    }

    /// Whether a destination at `addr` is allowed: [`Policy::check_ip`], and not one of
    /// weir's own listeners.
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), NotAllowed> {
        self.check_ip(addr.ip())?;
        if !self.allow_weir_listeners && self.is_weir(addr) {
            return Err(NotAllowed(format!(
                "{addr} is weir's own listener; the operator setting allow_weir_listeners \
                 (--allow-weir-listeners) would allow it"
            )));
        }
        Ok(())
    }

    /// Whether a listener port of weir's is `port`: only then can a name lead to weir.
    pub fn is_weir_port(&self, port: u16) -> bool {
        !self.allow_weir_listeners && self.weir_listeners.iter().any(|l| l.port() == port)
    }

    /// Whether `addr` reaches one of weir's listeners: the same port, at the listener's
    /// address, or at any address of this host when the listener takes them all.
    fn is_weir(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.weir_listeners.iter().any(|l| {
            l.port() == addr.port()
                && (canonical(l.ip()) == ip
                    || ip.is_unspecified()
                    || (ip.is_loopback() && l.ip().is_loopback())
                    || (l.ip().is_unspecified() && is_local(ip)))
        })
    }

    /// Checks the host of an endpoint URL (`http://169.254.169.254/`), or of a
    /// `host:port`, as far as it can be without resolving a name: an IP address, or
    /// `localhost`.
    pub fn check_host(&self, host: &str, port: Option<u16>) -> Result<(), NotAllowed> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) if host.eq_ignore_ascii_case("localhost") => IpAddr::from([127, 0, 0, 1]),
            Err(_) => return Ok(()),
        };
        match port {
            Some(port) => self.check_addr(SocketAddr::new(ip, port)),
            None => self.check_ip(ip),
        }
    }

    /// Checks a URL's host and port as [`Policy::check_host`] does.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), NotAllowed> {
        match url.host_str() {
            Some(host) => self.check_host(host, url.port_or_known_default()),
            None => Ok(()),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Link-local addresses, where the cloud metadata services answer (169.254.169.254,
/// fe80::/10), and AWS's IPv6 metadata address (fd00:ec2::254).
pub fn is_link_local(ip: IpAddr) -> bool {
    const AWS_IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == AWS_IMDS_V6,
    }
}

/// Whether `ip` is an address of this host: only then can a socket be bound to it.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The webhook client's resolver: the system's, without the addresses the policy
/// refuses, so that a name cannot lead where an address may not.
pub struct Resolver {
    pub policy: std::sync::Arc<Policy>,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(e)) => Err(Box::new(NotAllowed(format!("{host}: {e}"))) as _),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The [`NotAllowed`] in an error's chain of sources, if any.
pub fn not_allowed_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotAllowed> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(n) = err.downcast_ref::<NotAllowed>() {
            return Some(n);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            file_dirs: vec![PathBuf::from("/data/out")],
            weir_listeners: vec![
                "127.0.0.1:8080".parse().unwrap(),
                "0.0.0.0:1883".parse().unwrap(),
            ],
            ..Policy::default()
        }
    }

    #[test]
    fn file_destinations_stay_below_the_allowed_directories() {
        let p = policy();
        assert!(p.check_file_dir(Path::new("/data/out")).is_ok());
        assert!(p.check_file_dir(Path::new("/data/out/a/b")).is_ok());
        for (dir, needle) in [
            (
                "/etc",
                "outside the directories rules may write to (/data/out)",
            ),
            ("/data/outside", "allow_file_dirs (--allow-file-dirs)"),
            ("/data/out/../../etc", "must not contain '.' or '..'"),
            ("relative", "must be absolute"),
        ] {
            let err = p.check_file_dir(Path::new(dir)).unwrap_err().0;
            assert!(err.contains(needle), "{dir}: {err}");
        }
    }

    #[test]
    fn link_local_and_weir_itself_are_refused() {
        let p = policy();
        for (host, port, needle) in [
            ("169.254.169.254", Some(80), "link-local"),
            ("[fe80::1]", Some(80), "link-local"),
            ("fd00:ec2::254", None, "link-local"),
            ("::ffff:169.254.169.254", Some(80), "allow_link_local"),
            ("127.0.0.1", Some(8080), "weir's own listener"),
            ("localhost", Some(8080), "allow_weir_listeners"),
            ("127.0.0.2", Some(8080), "weir's own listener"),
            ("0.0.0.0", Some(8080), "weir's own listener"),
            ("127.0.0.1", Some(1883), "weir's own listener"),
        ] {
            let err = p.check_host(host, port).unwrap_err().0;
            assert!(err.contains(needle), "{host}:{port:?}: {err}");
        }
        for (host, port) in [
            ("127.0.0.1", Some(8081)),
            ("10.0.0.1", Some(8080)),
            ("example.com", Some(8080)),
            ("169.254.1.1.example.com", None),
            ("192.168.1.1", None),
        ] {
            assert!(p.check_host(host, port).is_ok(), "{host}:{port:?}");
        }
        let open = Policy {
            allow_link_local: true,
            allow_weir_listeners: true,
            ..policy()
        };
        assert!(open.check_host("169.254.169.254", Some(80)).is_ok());
        assert!(open.check_host("127.0.0.1", Some(8080)).is_ok());
    }

    #[test]
    fn urls_are_checked_by_their_parsed_host() {
        let p = policy();
        // The WHATWG parser reads these as 169.254.169.254.
        for url in [
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://169.254.169.254./",
        ] {
            let u = reqwest::Url::parse(url).unwrap();
            assert!(p.check_url(&u).is_err(), "{url} should be refused");
        }
        let u = reqwest::Url::parse("http://localhost:8080/v1/rules").unwrap();
        assert!(p.check_url(&u).is_err());
        let u = reqwest::Url::parse("https://hooks.example.com/x").unwrap();
        assert!(p.check_url(&u).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        use reqwest::dns::Resolve;
        let r = Resolver {
            policy: std::sync::Arc::new(policy()),
        };
        let name = |s: &str| s.parse::<reqwest::dns::Name>().unwrap();
        let addrs: Vec<_> = r.resolve(name("localhost")).await.unwrap().collect();
        assert!(!addrs.is_empty());
        let err = r.resolve(name("169.254.169.254")).await.err().unwrap();
        assert!(not_allowed_in(&*err).is_some(), "{err}");
    }
}
