//! Signed webhooks: where a callback may go ([`UrlPolicy`]), how it is signed ([`sign`]), and the
//! delivery worker ([`delivery`]). A webhook URL is checked at submit (scheme, and every address
//! its host resolves to) and again at connect time by [`GuardedResolver`], so a name that
//! resolves to a public address at submit and to a private one later (DNS rebinding) never
//! reaches the cluster's own network.

pub mod delivery;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::Url;

use crate::config::WebhooksConfig;

/// How long a submit waits for the webhook host's addresses.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An address block of `webhooks.allowed_cidrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.1.0.0/16`, `::1/128`; a bare address is one host.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("webhooks.allowed_cidrs: {text:?} is not a CIDR — write it like 127.0.0.1/32 or fd00::/8")
        };
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, true),
            IpAddr::V6(v6) => (u128::from(v6), false),
        };
        let ((net, net_v4), (addr, addr_v4)) = (bits(self.network), bits(canonical(ip)));
        if net_v4 != addr_v4 {
            return false;
        }
        // Both families sit in the top bits, so the prefix counts from the top either way.
        let host_bits = 128 - u32::from(self.prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            u128::MAX << host_bits
        };
        net & mask == addr & mask
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why `ip` is not a public unicast address, if it is not.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => embedded_v4(v6)
            .and_then(non_public_v4)
            .or_else(|| non_public_v6(v6)),
    }
}

/// The IPv4 address an IPv6 transition address carries, which a relay or translator on the
/// path would reach: 6to4 (`2002:AABB:CCDD::/48`), the NAT64 well-known prefix
/// (`64:ff9b::/96`) and the deprecated IPv4-compatible form (`::a.b.c.d`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || (s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback())
    {
        Some(v4(s[6], s[7]))
    } else {
        None
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if a == 100 && (64..128).contains(&b) {
        "shared (carrier-grade NAT)"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "multicast or reserved"
    } else {
        return None;
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if first & 0xfe00 == 0xfc00 {
        "unique-local"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if s0_s1(ip) == (0x2001, 0) {
        // Teredo hides its client's IPv4 address (XORed); no webhook needs one.
        "Teredo tunnel"
    } else {
        return None;
    })
}

fn s0_s1(ip: Ipv6Addr) -> (u16, u16) {
    let s = ip.segments();
    (s[0], s[1])
}

/// Where webhooks may go: https (http only with `allow_http`), and public addresses unless one
/// of `allowed_cidrs` takes it in.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    allow_http: bool,
    allowed: Arc<Vec<Cidr>>,
}

impl UrlPolicy {
    pub fn new(cfg: &WebhooksConfig) -> Self {
        let allowed = cfg
            .allowed_cidrs
            .iter()
            .filter_map(|c| Cidr::parse(c).ok())
            .collect();
        Self {
            allow_http: cfg.allow_http,
            allowed: Arc::new(allowed),
        }
    }

    /// `Err` with the cause and the fix when `ip` may not be reached.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        match non_public(ip) {
            Some(kind) if !self.allowed.iter().any(|c| c.contains(ip)) => Err(format!(
                "the webhook host resolves to {ip}, a {kind} address — webhooks go to public addresses only; use a public HTTPS endpoint (an operator may allow a range with webhooks.allowed_cidrs)"
            )),
            _ => Ok(()),
        }
    }

    /// Parses `text` and checks its scheme and literal address (no DNS).
    pub fn parse(&self, text: &str) -> Result<Url, String> {
        let url = Url::parse(text).map_err(|e| {
            format!("webhookUrl {text:?} is not a URL ({e}) — send an absolute https:// URL")
        })?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => {
                return Err(format!("webhookUrl uses {other}:// — webhooks go to https:// URLs only (http:// only on a gateway configured with webhooks.allow_http for development)"))
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("webhookUrl carries credentials — leave user:password out; verify deliveries by their signature".into());
        }
        match host_of(&url) {
            None => return Err("webhookUrl has no host — send an absolute https:// URL".into()),
            Some(Host::Ip(ip)) => self.check_ip(ip)?,
            Some(Host::Name(_)) => {}
        }
        Ok(url)
    }

    /// [`Self::parse`], then every address the host resolves to.
    pub async fn check(&self, text: &str) -> Result<Url, String> {
        let url = self.parse(text)?;
        if let Some(Host::Name(host)) = host_of(&url) {
            let port = url.port_or_known_default().unwrap_or(443);
            let lookup = tokio::net::lookup_host((host, port));
            let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                .await
                .map_err(|_| format!("the webhook host {host} did not resolve within {RESOLVE_TIMEOUT:?} — check the URL, or retry"))?
                .map_err(|e| format!("the webhook host {host} does not resolve ({e}) — check the URL"))?
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "the webhook host {host} has no address — check the URL"
                ));
            }
            for addr in addrs {
                self.check_ip(addr.ip())?;
            }
        }
        Ok(url)
    }
}

/// A URL's host: an address literal or a name to resolve.
pub enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

pub fn host_of(url: &Url) -> Option<Host<'_>> {
    let host = url.host_str()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(host),
    })
}

/// The delivery client's resolver: a name resolving to any address the policy refuses fails the
/// connection, so what was checked at submit is what is reached at delivery.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub UrlPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                policy.check_ip(addr.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The Standard Webhooks signature header's value: `v1,` + base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}`, keyed by the secret (`whsec_` + base64 of the key, or the raw key).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| b64.decode(k).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> UrlPolicy {
        UrlPolicy::new(&WebhooksConfig {
            allowed_cidrs: allowed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn private_loopback_link_local_and_mapped_addresses_are_refused() {
        let p = policy(&[]);
        for url in [
            "https://10.0.0.1/hook",
            "https://192.168.1.1/",
            "https://127.0.0.1/",
            "https://169.254.169.254/",
            "https://0.0.0.0/",
            "https://[::1]/x",
            "https://[::]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://[::ffff:127.0.0.1]/x",
            // Transition forms that carry a private IPv4 address.
            "https://[2002:a00:1::1]/x",
            "https://[2002:7f00:1::]/x",
            "https://[64:ff9b::a9fe:a9fe]/x",
            "https://[::10.0.0.1]/x",
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x",
        ] {
            let err = p.parse(url).unwrap_err();
            assert!(err.contains("webhooks.allowed_cidrs"), "{url}: {err}");
        }
        p.parse("https://93.184.215.14/hook").unwrap();
        // The same forms around a public IPv4 address, and a plain global IPv6 address, pass.
        p.parse("https://[2002:5db8:d70e::1]/hook").unwrap();
        p.parse("https://[64:ff9b::5db8:d70e]/hook").unwrap();
        p.parse("https://[2606:4700::1111]/hook").unwrap();
    }

    #[test]
    fn only_https_unless_http_is_allowed() {
        let p = policy(&[]);
        assert!(p
            .parse("http://example.com/")
            .unwrap_err()
            .contains("allow_http"));
        assert!(p.parse("ftp://example.com/").is_err());
        let dev = UrlPolicy::new(&WebhooksConfig {
            allow_http: true,
            ..Default::default()
        });
        dev.parse("http://example.com/").unwrap();
    }

    #[test]
    fn an_allowed_range_lets_its_addresses_through() {
        let p = policy(&["127.0.0.0/8", "::1/128"]);
        p.parse("https://127.0.0.1:9/").unwrap();
        p.parse("https://[::1]/").unwrap();
        p.parse("https://[::ffff:127.0.0.1]/").unwrap();
        assert!(p.parse("https://10.0.0.1/").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0/8")
            .unwrap()
            .contains("10.255.0.1".parse().unwrap()));
        assert!(!Cidr::parse("10.0.0.0/8")
            .unwrap()
            .contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_signature_matches_the_specs_example() {
        // The example of the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}

#[cfg(test)]
mod connect_tests {
    use reqwest::dns::Resolve;

    use super::*;

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_into_a_private_range() {
        // What DNS rebinding would do: a name that passed at submit resolves privately later.
        let guarded = GuardedResolver(UrlPolicy::new(&WebhooksConfig::default()));
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = guarded.resolve(name).await.err().expect("refused");
        assert!(err.to_string().contains("loopback"), "{err}");
        let allowed = GuardedResolver(UrlPolicy::new(&WebhooksConfig {
            allowed_cidrs: vec!["127.0.0.0/8".into(), "::1/128".into()],
            ..Default::default()
        }));
        let addrs: Vec<_> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
