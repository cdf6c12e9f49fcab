//! Address ranges for `server.trusted_proxies` (`10.0.0.0/8`, `::1`), and
//! the client's address as a chain of trusted proxies tells it.

use std::net::IpAddr;
use std::str::FromStr;

/// An IP network in CIDR notation; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

fn mask(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (net >> shift) == (ip >> shift)
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?} has a bad prefix length"))?
            }
        };
        Ok(IpNet { addr, prefix })
    }
}

/// Whether `ip` is one of the `trusted` proxies.
pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The client's address: `peer` itself, unless it is a trusted proxy, in
/// which case the `X-Forwarded-For` lines it sent (`chain`, oldest hop
/// first) are read from the right, past every trusted proxy, to the first
/// address no trusted proxy is; that is the one a trusted proxy saw, and
/// everything left of it is the client's to make up. An entry that is not
/// an address ends the walk at the proxy that passed it on.
/// The lines are bytes: an entry that is not text (a client may write
/// anything to the left of what its proxy appends) ends the walk where it
/// stands, and spoils nothing to its right.
pub fn client_address<'a>(peer: IpAddr, chain: impl DoubleEndedIterator<Item = &'a [u8]>, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    for entry in chain.rev().flat_map(|line| line.rsplit(|b| *b == b',')) {
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(|e| parse_hop(e.trim())) else { break };
        client = ip.to_canonical();
        if !is_trusted(trusted, client) {
            break;
        }
    }
    client
}

/// One hop of `X-Forwarded-For`: an address, perhaps with a port
/// (`1.2.3.4:5678`, `[::1]:80`), as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    entry
        .rsplit_once(':')
        .and_then(|(ip, port)| port.parse::<u16>().ok().and(ip.parse::<std::net::Ipv4Addr>().ok()))
        .map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: IpNet = "::/0".parse().unwrap();
        assert!(all.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("ten".parse::<IpNet>().is_err());
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let client =
            |peer: &str, lines: &[&str]| client_address(ip(peer), lines.iter().map(|l| l.as_bytes()), &trusted);
        // An untrusted peer is the client, whatever it says.
        assert_eq!(client("6.6.6.6", &["1.1.1.1"]), ip("6.6.6.6"));
        // A trusted peer's chain is read from the right, past trusted hops.
        assert_eq!(client("10.0.0.1", &["1.1.1.1, 2.2.2.2, 10.0.0.9"]), ip("2.2.2.2"));
        assert_eq!(client("10.0.0.1", &["1.1.1.1", "2.2.2.2"]), ip("2.2.2.2"));
        assert_eq!(client("10.0.0.1", &["2.2.2.2:4711", "[2001:db8::1]:80"]), ip("2001:db8::1"));
        assert_eq!(client("::ffff:10.0.0.1", &["::ffff:2.2.2.2"]), ip("2.2.2.2"));
        // No chain, or only trusted hops: the last trusted hop.
        assert_eq!(client("10.0.0.1", &[]), ip("10.0.0.1"));
        assert_eq!(client("10.0.0.1", &["10.0.0.2, 10.0.0.3"]), ip("10.0.0.2"));
        // Garbage stops the walk at the proxy that passed it on.
        assert_eq!(client("10.0.0.1", &["2.2.2.2, unknown, 10.0.0.3"]), ip("10.0.0.3"));
        // Bytes that are not text, left of what a proxy appended, change nothing right of them.
        let line: &[u8] = b"\xff\xfe, 203.0.113.7";
        assert_eq!(client_address(ip("10.0.0.1"), std::iter::once(line), &trusted), ip("203.0.113.7"));
    }
}
