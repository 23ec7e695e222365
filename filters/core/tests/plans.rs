//! The policies as plans: what each decides for a request or response, and which facts it asks
//! of the host to decide it (each one a host call in Envoy). Table-driven where it fits; the
//! same behaviours run end to end against real Envoy in tests/tests/.
#![cfg(not(target_arch = "wasm32"))]
// Test code: a failed unwrap or index is a failed test, as in #[test] functions.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use tether_core::affinity::{AffinityPolicy, CookieState, SetReason};
use tether_core::body_limit::{BodyLimitPolicy, Reason};
use tether_core::forwarded::ForwardedPolicy;
use tether_core::headers::{Edit, HeaderMap};
use tether_core::path_pin::PathPinPolicy;
use tether_core::plan::{FixedFacts, Plan};
use tether_core::routing::{claim, remove_echo, served_address, session_value, Claim, SessionHeader};
use tether_core::uri_hash::{UriHashPolicy, UriHashResponse, DOWN_KEY};

const NODES: &str = r#"[{"name": "n1", "address": "127.0.0.1:8001"},
    {"name": "n2", "address": "127.0.0.1:8002"}, {"name": "n3", "address": "127.0.0.1:8003"}]"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn edits(plan: &Plan) -> Vec<(&str, Option<&str>)> {
    plan.edits
        .iter()
        .map(|(n, e)| {
            let v = match e {
                Edit::Set(v) | Edit::Add(v) => Some(std::str::from_utf8(v).unwrap()),
                Edit::Remove => None,
            };
            (&**n, v)
        })
        .collect()
}

fn peer(ip: &str) -> FixedFacts {
    FixedFacts { source_address: Some(format!("{ip}:40000").into_bytes()), ..FixedFacts::default() }
}

#[test]
fn forwarded_plans_for_trusted_and_untrusted_peers() {
    let policy = ForwardedPolicy::from_json(
        br#"{"trusted_proxies": ["10.0.0.0/8"], "real_ip": false, "forwarded_port": false}"#,
    )
    .unwrap();
    // (peer, request headers, wanted edits)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, Option<&'a str>)]);
    let cases: [Case; 5] = [
        (
            "203.0.113.7",
            &[(":path", "/")],
            &[("x-forwarded-for", Some("203.0.113.7")), ("x-forwarded-proto", Some("http"))],
        ),
        (
            "203.0.113.7",
            &[(":path", "/"), ("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "1.2.3.4")],
            &[("x-forwarded-for", Some("203.0.113.7")), ("x-real-ip", None), ("x-forwarded-proto", Some("http"))],
        ),
        (
            "10.1.2.3",
            &[(":path", "/"), ("x-forwarded-for", "198.51.100.1"), ("x-forwarded-proto", "https")],
            &[("x-forwarded-for", Some("198.51.100.1, 10.1.2.3")), ("x-forwarded-proto", Some("https"))],
        ),
        // A mesh's listener (skip_xff_append false) already appended the peer: named once.
        (
            "10.1.2.3",
            &[(":path", "/"), ("x-forwarded-for", "198.51.100.1, 10.1.2.3")],
            &[("x-forwarded-for", Some("198.51.100.1, 10.1.2.3")), ("x-forwarded-proto", Some("http"))],
        ),
        // ... and from an untrusted peer, whose list never counts.
        (
            "203.0.113.7",
            &[(":path", "/"), ("x-forwarded-for", "1.2.3.4, 203.0.113.7")],
            &[("x-forwarded-for", Some("203.0.113.7")), ("x-forwarded-proto", Some("http"))],
        ),
    ];
    for (ip, headers, want) in cases {
        let (plan, outcome) = policy.on_request(&HeaderMap::from_pairs(headers.iter().copied()), &mut peer(ip));
        assert_eq!(edits(&plan), want, "{ip} {headers:?}");
        assert_eq!(outcome.forged, ip.starts_with("203.") && headers.len() > 1);
    }
}

#[test]
fn forwarded_asks_only_for_the_facts_its_config_needs() {
    let forced = ForwardedPolicy::from_json(br#"{"proto": "https", "forwarded_port": false}"#).unwrap();
    let mut facts = peer("192.0.2.1");
    let (plan, outcome) = forced.on_request(&HeaderMap::from_pairs([(":path", "/")]), &mut facts);
    assert!(outcome.https);
    assert_eq!(facts.asked, ["source_address"], "a forced proto needs no TLS read");
    assert!(plan.reply.is_none());
    let auto = ForwardedPolicy::from_json(br#"{"forwarded_port": true}"#).unwrap();
    let mut facts = FixedFacts { tls: true, destination_port: Some(8443), ..peer("192.0.2.1") };
    let (plan, _) = auto.on_request(&HeaderMap::from_pairs([(":path", "/")]), &mut facts);
    assert_eq!(facts.asked, ["source_address", "tls", "destination_port"]);
    assert!(edits(&plan).contains(&("x-forwarded-port", Some("8443"))));
}

#[test]
fn forwarded_redirects_plain_http_whoever_the_peer_is() {
    let policy = ForwardedPolicy::from_json(br#"{"https_redirect": {"port": 443}}"#).unwrap();
    let headers = HeaderMap::from_pairs([(":path", "/a?b"), (":authority", "example.org:80"), (":method", "POST")]);
    for mut facts in [peer("192.0.2.1"), FixedFacts::default()] {
        let (plan, outcome) = policy.on_request(&headers, &mut facts);
        let reply = plan.reply.unwrap();
        assert_eq!((reply.status, reply.headers[0].1.as_str()), (308, "https://example.org/a?b"));
        assert!(outcome.redirected && plan.edits.is_empty());
    }
}

#[test]
fn the_clients_host_is_host_where_the_host_keeps_it_apart_from_authority() {
    // ngx_wasm_module: `:authority` is nginx's server name and port, `Host` the client's.
    let policy = ForwardedPolicy::from_json(br#"{"https_redirect": {"port": 443}, "forwarded": true}"#).unwrap();
    let nginx = [(":path", "/p"), (":authority", "localhost:8080"), ("Host", "app.example"), (":method", "GET")];
    let (plan, _) = policy.on_request(&HeaderMap::from_pairs(nginx), &mut peer("192.0.2.1"));
    assert_eq!(plan.reply.unwrap().headers[0].1, "https://app.example/p");
    let https = ForwardedPolicy::from_json(br#"{"proto": "https", "forwarded": true}"#).unwrap();
    let (plan, _) = https.on_request(&HeaderMap::from_pairs(nginx), &mut peer("192.0.2.1"));
    assert!(edits(&plan).contains(&("x-forwarded-host", Some("app.example"))), "{plan:?}");
    assert!(edits(&plan).iter().any(|(n, v)| *n == "forwarded" && v.unwrap().ends_with(";host=app.example")));
}

#[test]
fn an_unreadable_peer_is_untrusted_and_the_clients_forwarding_headers_never_pass() {
    // Issue 18: a host that gives no readable source.address (nothing, a pipe, garbage) used to
    // leave every header as the client sent it.
    let policy = ForwardedPolicy::from_json(br#"{"trusted_proxies": ["0.0.0.0/0"], "forwarded": true}"#).unwrap();
    let forged = HeaderMap::from_pairs([
        (":path", "/"),
        (":authority", "app.example"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-real-ip", "1.2.3.4"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=1.2.3.4"),
    ]);
    for source in [None, Some(&b"unix:/run/app.sock"[..]), Some(&b"\xff garbage"[..])] {
        let mut facts = FixedFacts { source_address: source.map(<[u8]>::to_vec), ..FixedFacts::default() };
        let (plan, outcome) = policy.on_request(&forged, &mut facts);
        assert!(outcome.no_peer && outcome.forged, "{source:?}");
        let mut after = forged.clone();
        after.apply(plan.edits);
        for name in ["x-forwarded-for", "x-real-ip", "forwarded"] {
            assert_eq!(after.get(name), None, "{name} passed from {source:?}");
        }
        assert_eq!(after.get("x-forwarded-host"), Some(&b"app.example"[..]), "the host is Envoy's word");
        assert!(after.get("x-forwarded-proto").is_some());
    }
}

#[test]
fn forwarded_reads_a_peer_with_or_without_port() {
    // Envoy writes `ip:port`; nginx's ngx_wasm_module a bare IP. Either is the client.
    let policy = ForwardedPolicy::from_json(br#"{"real_ip": false, "forwarded_port": false}"#).unwrap();
    for source in ["192.0.2.9:51000", "192.0.2.9", "[2001:db8::9]:443", "2001:db8::9"] {
        let mut facts = FixedFacts { source_address: Some(source.as_bytes().to_vec()), ..FixedFacts::default() };
        let (plan, outcome) = policy.on_request(&HeaderMap::from_pairs([(":path", "/")]), &mut facts);
        assert!(!outcome.no_peer, "{source}");
        let want = if source.contains("db8") { "2001:db8::9" } else { "192.0.2.9" };
        assert_eq!(edits(&plan)[0], ("x-forwarded-for", Some(want)), "{source}");
    }
}

#[test]
fn forwarded_response_hsts_only_over_https_and_served_by_from_the_served_endpoint() {
    let policy = ForwardedPolicy::from_json(
        format!(r#"{{"hsts": {{"max_age": "1d"}}, "served_by": {{"nodes": {NODES}}}}}"#).as_bytes(),
    )
    .unwrap();
    let mut facts = FixedFacts { served: Some(addr("127.0.0.1:8002")), ..FixedFacts::default() };
    let (plan, unknown) = policy.on_response(true, &HeaderMap::default(), &mut facts);
    assert_eq!(edits(&plan), [("strict-transport-security", Some("max-age=86400")), ("x-served-by", Some("n2"))]);
    assert_eq!(unknown, None);
    let upstream_hsts = HeaderMap::from_pairs([("strict-transport-security", "max-age=1")]);
    let mut facts = FixedFacts { served: Some(addr("127.0.0.1:9999")), ..FixedFacts::default() };
    let (plan, unknown) = policy.on_response(true, &upstream_hsts, &mut facts);
    assert!(plan.edits.is_empty(), "the upstream's own HSTS stays; an unknown endpoint gets no name");
    assert_eq!(unknown, Some(addr("127.0.0.1:9999")));
    let (plan, _) = policy.on_response(false, &HeaderMap::default(), &mut FixedFacts::default());
    assert!(plan.edits.is_empty());
}

#[test]
fn the_routing_contract_asks_for_the_mark_only_when_a_session_header_came_in() {
    let header = SessionHeader::default();
    // (session header on the request, routed_by, wanted claim, removed)
    let cases = [
        (false, None, Claim::Open { forged_removed: false }, false),
        (true, None, Claim::Open { forged_removed: true }, true),
        (true, Some("path-pin"), Claim::DecidedEarlier, false),
    ];
    for (present, routed_by, want, removed) in cases {
        let headers = if present {
            HeaderMap::from_pairs([("x-tether-session", "MTI3LjAuMC4xOjgwMDE=")])
        } else {
            HeaderMap::default()
        };
        let mut facts = FixedFacts { routed_by: routed_by.map(|r| r.as_bytes().to_vec()), ..FixedFacts::default() };
        let mut plan = Plan::default();
        assert_eq!(claim(&headers, &header, &mut facts, &mut plan), want);
        assert_eq!(facts.asked.len(), usize::from(present), "routed_by asked only with a header");
        assert_eq!(plan.edits.len(), usize::from(removed));
    }
}

#[test]
fn the_served_endpoint_comes_from_the_echo_then_the_pin_then_the_property() {
    let echo = session_value(&addr("127.0.0.1:8002"));
    let pinned = Some(addr("127.0.0.1:8001"));
    let never = || -> Option<Vec<u8>> { panic!("upstream.address must not be asked") };
    assert_eq!(served_address(Some(echo.as_bytes()), pinned, never), Some(addr("127.0.0.1:8002")));
    assert_eq!(served_address(None, pinned, never), pinned, "Envoy writes nothing when the pinned endpoint served");
    assert_eq!(served_address(None, None, || Some(b"127.0.0.1:8003".to_vec())), Some(addr("127.0.0.1:8003")));
    assert_eq!(served_address(Some(b"not base64!"), None, || None), None);
    // The echo is removed unless another filter decided (it removes the echo itself).
    let header = SessionHeader::default();
    let echoed = HeaderMap::from_pairs([("x-tether-session", &*echo)]);
    for (headers, claim, removed) in [
        (&echoed, Claim::Open { forged_removed: false }, true),
        (&echoed, Claim::Open { forged_removed: true }, true),
        (&echoed, Claim::DecidedEarlier, false),
        (&HeaderMap::default(), Claim::Open { forged_removed: false }, false),
    ] {
        let mut plan = Plan::default();
        remove_echo(&mut plan, headers, &header, claim);
        assert_eq!(plan.edits.len(), usize::from(removed), "{claim:?}");
    }
}

fn affinity() -> AffinityPolicy {
    let json = format!(r#"{{"nodes": {NODES}, "cookie": {{"keys": ["k-0123456789abcdef"], "maxidle": "1h"}}}}"#);
    AffinityPolicy::from_json(json.as_bytes(), |_| None).unwrap()
}

#[test]
fn affinity_new_session_then_returning_user_then_redispatch() {
    let policy = affinity();
    let now = 1_700_000_000_000;
    // A new session: nothing routed; the response names the endpoint that served.
    let mut facts = FixedFacts { now_ms: now, ..FixedFacts::default() };
    let (plan, first) = policy.on_request(&HeaderMap::from_pairs([(":path", "/")]), &mut facts);
    assert!(plan.edits.is_empty() && facts.asked.is_empty(), "no cookie: no clock, no mark");
    let echo = HeaderMap::from_pairs([("x-tether-session", "MTI3LjAuMC4xOjgwMDI=")]);
    let mut facts = FixedFacts { now_ms: now, served: Some(addr("127.0.0.1:8002")), ..FixedFacts::default() };
    let (plan, outcome) = policy.on_response(&first, &echo, &mut facts);
    assert_eq!(outcome.set, Some(SetReason::NewSession));
    assert_eq!(plan.edits[0], ("x-tether-session".into(), Edit::Remove), "internal address never leaves");
    let Edit::Add(set_cookie) = &plan.edits[1].1 else { panic!("{plan:?}") };
    let cookie = String::from_utf8(set_cookie.to_vec()).unwrap().split(';').next().unwrap().to_string();
    // The returning user is pinned to n2.
    let mut facts = FixedFacts { now_ms: now + 1000, ..FixedFacts::default() };
    let (plan, back) = policy.on_request(&HeaderMap::from_pairs([(":path", "/"), ("cookie", &cookie)]), &mut facts);
    assert!(matches!(back.state, CookieState::Valid { node: 1, .. }));
    // "indirect" (the default): the backend never sees the cookie.
    assert_eq!(edits(&plan), [("x-tether-session", Some("MTI3LjAuMC4xOjgwMDI=")), ("cookie", None)]);
    assert_eq!(plan.route.and_then(|r| r.address), Some(addr("127.0.0.1:8002")));
    // Pinned node served (no echo): nothing to do. Another served: the session moves.
    let mut facts = FixedFacts { now_ms: now + 1000, served: Some(addr("127.0.0.1:8002")), ..FixedFacts::default() };
    assert_eq!(policy.on_response(&back, &HeaderMap::default(), &mut facts).1.set, None);
    let mut facts = FixedFacts { now_ms: now + 1000, served: Some(addr("127.0.0.1:8003")), ..FixedFacts::default() };
    assert_eq!(policy.on_response(&back, &HeaderMap::default(), &mut facts).1.set, Some(SetReason::Redispatch));
}

#[test]
fn affinity_without_nodes_routes_to_the_sealed_endpoint_and_asks_its_name_only_if_configured() {
    for (named, name_fact) in [(false, None), (true, Some(b"web-0".to_vec()))] {
        let endpoint_name =
            if named { r#""endpoint_name": {"filter_metadata": "tether", "key": "name"},"# } else { "" };
        let json = format!(r#"{{{endpoint_name} "cookie": {{"keys": ["k-0123456789abcdef"]}}}}"#);
        let policy = AffinityPolicy::from_json(json.as_bytes(), |_| None).unwrap();
        let echo = HeaderMap::from_pairs([("x-tether-session", "MTAuMC4wLjc6ODA4MA==")]);
        let mut facts = FixedFacts {
            served: Some(addr("10.0.0.7:8080")),
            endpoint_metadata: name_fact.clone(),
            ..FixedFacts::default()
        };
        let (_, first) = policy.on_request(&HeaderMap::from_pairs([(":path", "/")]), &mut FixedFacts::default());
        let (plan, outcome) = policy.on_response(&first, &echo, &mut facts);
        assert_eq!(outcome.set, Some(SetReason::NewSession));
        assert_eq!(facts.asked.contains(&"endpoint_metadata"), named, "{:?}", facts.asked);
        let Edit::Add(set_cookie) = &plan.edits[1].1 else { panic!("{plan:?}") };
        let cookie = String::from_utf8(set_cookie.to_vec()).unwrap().split(';').next().unwrap().to_string();
        let (plan, back) = policy
            .on_request(&HeaderMap::from_pairs([(":path", "/"), ("cookie", &cookie)]), &mut FixedFacts::default());
        assert!(matches!(back.state, CookieState::Endpoint(_)), "{:?}", back.state);
        assert_eq!(edits(&plan), [("x-tether-session", Some("MTAuMC4wLjc6ODA4MA==")), ("cookie", None)]);
        assert_eq!(plan.route.and_then(|r| r.address), Some(addr("10.0.0.7:8080")));
        // The pinned endpoint served: a returning user's response costs the name read only.
        let mut facts =
            FixedFacts { served: Some(addr("10.0.0.7:8080")), endpoint_metadata: name_fact, ..FixedFacts::default() };
        assert_eq!(policy.on_response(&back, &HeaderMap::default(), &mut facts).1.set, None);
        let want: &[&str] = if named { &["served", "endpoint_metadata", "now"] } else { &["served", "now"] };
        assert_eq!(facts.asked, want);
    }
}

#[test]
fn affinity_says_when_the_routing_contract_or_the_secure_flag_cannot_work() {
    let policy = affinity();
    let served = |address: &str| FixedFacts { served: Some(addr(address)), ..FixedFacts::default() };
    let (_, fresh) = policy.on_request(&HeaderMap::from_pairs([(":path", "/")]), &mut FixedFacts::default());
    let echo = HeaderMap::from_pairs([("x-tether-session", "MTI3LjAuMC4xOjgwMDI=")]);
    let outcome =
        |request, headers: &HeaderMap, mut facts: FixedFacts| policy.on_response(request, headers, &mut facts).1;
    // Unpinned, an upstream served, Envoy wrote no session header: stateful_session is not there.
    assert!(outcome(&fresh, &HeaderMap::default(), served("127.0.0.1:8002")).routing_contract_missing);
    assert!(!outcome(&fresh, &echo, served("127.0.0.1:8002")).routing_contract_missing);
    assert!(!outcome(&fresh, &HeaderMap::default(), FixedFacts::default()).routing_contract_missing, "local reply");
    // Pinned and served by its endpoint: no header is Envoy's normal answer.
    let cookie = {
        let Edit::Add(set) = &policy.on_response(&fresh, &echo, &mut served("127.0.0.1:8002")).0.edits[1].1 else {
            panic!()
        };
        String::from_utf8(set.to_vec()).unwrap().split(';').next().unwrap().to_string()
    };
    let (_, back) =
        policy.on_request(&HeaderMap::from_pairs([(":path", "/"), ("cookie", &cookie)]), &mut FixedFacts::default());
    assert!(!outcome(&back, &HeaderMap::default(), served("127.0.0.1:8002")).routing_contract_missing);
    // secure: true on plain http.
    let json = format!(r#"{{"nodes": {NODES}, "cookie": {{"keys": ["k-0123456789abcdef"], "secure": true}}}}"#);
    let always = AffinityPolicy::from_json(json.as_bytes(), |_| None).unwrap();
    let (_, http) =
        always.on_request(&HeaderMap::from_pairs([(":path", "/"), (":scheme", "http")]), &mut FixedFacts::default());
    let (_, https) =
        always.on_request(&HeaderMap::from_pairs([(":path", "/"), (":scheme", "https")]), &mut FixedFacts::default());
    assert!(always.on_response(&http, &echo, &mut served("127.0.0.1:8002")).1.secure_cookie_on_http);
    assert!(!always.on_response(&https, &echo, &mut served("127.0.0.1:8002")).1.secure_cookie_on_http);
    assert!(!policy.on_response(&fresh, &echo, &mut served("127.0.0.1:8002")).1.secure_cookie_on_http, "auto");
}

#[test]
fn forwarded_names_the_endpoint_from_its_metadata_without_a_nodes_table() {
    let json = br#"{"served_by": {"endpoint_name": {"filter_metadata": "tether", "key": "name"}}}"#;
    let policy = ForwardedPolicy::from_json(json).unwrap();
    let mut facts = FixedFacts { endpoint_metadata: Some(b"server-pro-0".to_vec()), ..FixedFacts::default() };
    let (plan, unknown) = policy.on_response(false, &HeaderMap::default(), &mut facts);
    assert_eq!((edits(&plan), unknown), (vec![("x-served-by", Some("server-pro-0"))], None));
    assert_eq!(facts.asked, ["endpoint_metadata"], "the name only, no address");
    // No upstream (a local reply), or a name that cannot be a header value: no header.
    for value in [None, Some(b"bad\nname".to_vec())] {
        let mut facts = FixedFacts { endpoint_metadata: value, ..FixedFacts::default() };
        assert!(policy.on_response(false, &HeaderMap::default(), &mut facts).0.edits.is_empty());
    }
    for bad in [
        &br#"{"served_by": {}}"#[..],
        br#"{"served_by": {"endpoint_name": {"filter_metadata": "t", "key": "n"}, "nodes": [{"name": "a", "address": "10.0.0.1:80"}]}}"#,
    ] {
        let err = ForwardedPolicy::from_json(bad).unwrap_err().to_string();
        assert!(err.starts_with("served_by: name the endpoints either by a nodes table"), "{err}");
    }
}

#[test]
fn affinity_leaves_ignored_prefixes_alone_both_ways() {
    let json = r#"{"ignore_prefixes": ["/git/"], "cookie": {"keys": ["k-0123456789abcdef"]}}"#;
    let policy = AffinityPolicy::from_json(json.as_bytes(), |_| None).unwrap();
    let (_, fresh) = policy.on_request(&HeaderMap::from_pairs([(":path", "/")]), &mut FixedFacts::default());
    let echo = HeaderMap::from_pairs([("x-tether-session", "MTI3LjAuMC4xOjgwMDI=")]);
    let mut served = FixedFacts { served: Some(addr("127.0.0.1:8002")), ..FixedFacts::default() };
    let Edit::Add(set) = &policy.on_response(&fresh, &echo, &mut served).0.edits[1].1 else { panic!() };
    let cookie = String::from_utf8(set.to_vec()).unwrap().split(';').next().unwrap().to_string();
    let git = HeaderMap::from_pairs([(":path", "/git/p.git/info/refs?service=x"), ("cookie", &cookie)]);
    let mut facts = FixedFacts::default();
    let (plan, request) = policy.on_request(&git, &mut facts);
    assert!(request.ignored && plan == Plan::default() && facts.asked.is_empty(), "{plan:?} {:?}", facts.asked);
    // Served by another endpoint (git-bridge), no session header: nothing, and no warning.
    let mut facts = FixedFacts { served: Some(addr("10.9.9.9:8000")), ..FixedFacts::default() };
    let (plan, outcome) = policy.on_response(&request, &HeaderMap::default(), &mut facts);
    assert_eq!((plan, outcome), (Plan::default(), tether_core::affinity::ResponseOutcome::default()));
    let (plan, _) = policy
        .on_request(&HeaderMap::from_pairs([(":path", "/gitx"), ("cookie", &cookie)]), &mut FixedFacts::default());
    assert!(plan.route.is_some(), "only the prefix is ignored");
}

#[test]
fn affinity_leaves_a_request_another_filter_routed() {
    let policy = affinity();
    let headers = HeaderMap::from_pairs([(":path", "/git/x"), ("x-tether-session", "MTI3LjAuMC4xOjgwMDE=")]);
    let mut facts = FixedFacts { routed_by: Some(b"path-pin".to_vec()), ..FixedFacts::default() };
    let (plan, request) = policy.on_request(&headers, &mut facts);
    assert_eq!((request.claim, plan.edits.len()), (Claim::DecidedEarlier, 0));
    let echo = HeaderMap::from_pairs([("x-tether-session", "MTI3LjAuMC4xOjgwMDI=")]);
    let (plan, outcome) = policy.on_response(&request, &echo, &mut FixedFacts::default());
    assert!(plan.edits.is_empty() && outcome.set.is_none(), "the decider removes the echo; the session stays");
}

#[test]
fn uri_hash_records_a_failover_once_the_chosen_node_did_not_serve() {
    let json = format!(r#"{{"nodes": {NODES}, "prefixes": ["/project/"], "depth": 2}}"#);
    let policy = UriHashPolicy::from_json(json.as_bytes()).unwrap();
    let headers = HeaderMap::from_pairs([(":path", "/project/abc/file")]);
    let mut facts = FixedFacts { now_ms: 1000, ..FixedFacts::default() };
    let (plan, request) = policy.on_request(&headers, &mut facts);
    let chosen = plan.route.unwrap().address.unwrap();
    let other = [addr("127.0.0.1:8001"), addr("127.0.0.1:8002")].into_iter().find(|a| *a != chosen).unwrap();
    facts.served = Some(chosen);
    assert_eq!(policy.on_response(&request, &HeaderMap::default(), &mut facts).1, UriHashResponse::Nothing);
    facts.served = Some(other);
    let (_, found) = policy.on_response(&request, &HeaderMap::default(), &mut facts);
    assert!(matches!(found, UriHashResponse::Failover { recorded: true, .. }), "{found:?}");
    assert!(facts.shared.iter().any(|(k, _, _)| k == DOWN_KEY));
    // The key now goes to its alternative.
    let (plan, again) = policy.on_request(&headers, &mut facts);
    assert_ne!(plan.route.unwrap().address.unwrap(), chosen);
    assert_ne!(again.choice.unwrap().node, again.choice.unwrap().primary);
    // A path outside the prefixes is untouched and asks for nothing.
    let mut facts = FixedFacts::default();
    let (plan, _) = policy.on_request(&HeaderMap::from_pairs([(":path", "/login")]), &mut facts);
    assert!(plan.edits.is_empty() && facts.asked.is_empty());
}

#[test]
fn uri_hash_without_nodes_hands_the_keys_hash_to_envoy_and_asks_nothing() {
    let policy = UriHashPolicy::from_json(br#"{"prefixes": ["/project/"], "depth": 2}"#).unwrap();
    assert!(policy.summary().contains("the route's hash policy"), "{}", policy.summary());
    let mut facts = FixedFacts::default();
    let (plan, request) =
        policy.on_request(&HeaderMap::from_pairs([(":path", "/project/5f3c/output.pdf")]), &mut facts);
    let same = policy.on_request(&HeaderMap::from_pairs([(":path", "/project/5f3c/compile?x=1")]), &mut facts).0;
    let other = policy.on_request(&HeaderMap::from_pairs([(":path", "/project/77aa/compile")]), &mut facts).0;
    assert_eq!(edits(&plan), edits(&same), "one key, one value");
    assert_ne!(edits(&plan), edits(&other));
    let [(name, Some(value))] = edits(&plan)[..] else { panic!("{plan:?}") };
    assert_eq!((name, value.len()), ("x-tether-session", 16));
    assert!(value.bytes().all(|b| b.is_ascii_hexdigit()), "{value}");
    assert_eq!(plan.route.map(|r| (r.by, r.address)), Some(("uri-hash", None)), "marked decided, pinned nowhere");
    assert!(request.hashed && request.choice.is_none());
    assert!(facts.asked.is_empty(), "no clock, no shared data: {:?}", facts.asked);
    // Nothing to learn from the response: Envoy's hash policy handles unhealthy endpoints.
    let mut facts = FixedFacts { served: Some(addr("10.0.0.9:80")), ..FixedFacts::default() };
    assert_eq!(policy.on_response(&request, &HeaderMap::default(), &mut facts).1, UriHashResponse::Nothing);
    assert!(facts.asked.is_empty(), "{:?}", facts.asked);
    // A path outside the prefixes is untouched.
    let (plan, request) = policy.on_request(&HeaderMap::from_pairs([(":path", "/login")]), &mut FixedFacts::default());
    assert!(plan.edits.is_empty() && !request.hashed);
    let err = UriHashPolicy::from_json(br#"{"failover_cooldown": "10s"}"#).unwrap_err().to_string();
    assert!(err.starts_with("failover_cooldown: only with a nodes table"), "{err}");
}

#[test]
fn path_pin_pins_and_notices_when_its_node_did_not_serve() {
    let json = format!(r#"{{"nodes": {NODES}, "rules": [{{"name": "git", "path_prefix": "/git/", "node": "n1"}}]}}"#);
    let policy = PathPinPolicy::from_json(json.as_bytes()).unwrap();
    let (plan, request) =
        policy.on_request(&HeaderMap::from_pairs([(":path", "/git/repo")]), &mut FixedFacts::default());
    assert_eq!(
        (request.pinned_rule, edits(&plan)),
        (Some(0), vec![("x-tether-session", Some("MTI3LjAuMC4xOjgwMDE="))])
    );
    let mut facts = FixedFacts { served: Some(addr("127.0.0.1:8001")), ..FixedFacts::default() };
    assert!(policy.on_response(&request, &HeaderMap::default(), &mut facts).1.is_none());
    let mut facts = FixedFacts { served: Some(addr("127.0.0.1:8003")), ..FixedFacts::default() };
    let (_, missed) = policy.on_response(&request, &HeaderMap::default(), &mut facts);
    assert_eq!(missed.map(|(rule, by)| (rule.name.as_str(), by)), Some(("git", Some("n3"))));
}

#[test]
fn body_limit_refuses_declared_and_streamed_excess() {
    let policy = BodyLimitPolicy::from_json(br#"{"default_limit": "10"}"#).unwrap();
    let declared = HeaderMap::from_pairs([("content-length", "11")]);
    let (plan, request) = policy.on_request(&declared, false);
    assert_eq!((plan.reply.map(|r| r.status), request.rejected), (Some(413), Some((Reason::DeclaredTooLarge, 10))));
    let (plan, mut request) = policy.on_request(&HeaderMap::default(), false);
    assert!(plan.reply.is_none());
    assert!(policy.on_body(&mut request, 10).reply.is_none(), "exactly the limit passes");
    assert_eq!(policy.on_body(&mut request, 1).reply.map(|r| r.status), Some(413));
    assert_eq!(request.rejected, Some((Reason::StreamedTooLarge, 10)));
    let (plan, request) = policy.on_request(&declared, true);
    assert!(plan.reply.is_none() && request.counter.is_none(), "no body follows");
}
