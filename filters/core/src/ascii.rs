//! Numbers and addresses written as ASCII without `core::fmt`: on a request path in Wasm, a
//! `to_string()` of an IPv4 address costs thousands of instructions (the formatting machinery,
//! a growing `String`); these write the same text directly.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Appends `n` in decimal.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    for &d in digits.get(at..).unwrap_or_default() {
        out.push(char::from(d));
    }
}

/// Appends `ip` as `Display` writes it (IPv4 dotted quad; IPv6 through `core::fmt`, whose
/// RFC 5952 compression is not worth repeating for the rarer case).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `address` as `Display` writes it: `ip:port`, `[ipv6]:port`.
pub fn push_socket_addr(out: &mut String, address: SocketAddr) {
    if address.is_ipv6() {
        out.push('[');
    }
    push_ip(out, address.ip());
    if address.is_ipv6() {
        out.push(']');
    }
    out.push(':');
    push_u64(out, u64::from(address.port()));
}

/// `ip` as text.
pub fn ip_string(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    push_ip(&mut out, ip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn writes_what_display_writes() {
        for n in [0, 7, 10, 99, 100, 443, 65535, 4_294_967_296, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        for ip in ["0.0.0.0", "127.0.0.1", "10.200.3.45", "255.255.255.255", "::1", "2001:db8::7", "::ffff:1.2.3.4"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
            let address = SocketAddr::new(ip, 8080);
            let mut out = String::new();
            push_socket_addr(&mut out, address);
            assert_eq!(out, address.to_string());
        }
    }
}
