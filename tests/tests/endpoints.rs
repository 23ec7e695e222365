//! Dynamic endpoints end to end (issue 15): affinity with no nodes table, its cookie sealing the
//! endpoint that serves, while the cluster's endpoints come from EDS and change under load as
//! pods scale, drain, restart with new addresses, and hand their addresses to new pods.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_core::token::{self, Claims, Key};
use tether_e2e::eds::{EcdsFile, EdsFile, Endpoint};
use tether_e2e::http::{request, Response};
use tether_e2e::{ws, Envoy, EnvoyConfig, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";
const KEY: &str = "e2e-test-key-0123456789abcdef";
/// Sealed cookies, named by the endpoint's EDS metadata (what Kubernetes calls the pod).
const CONFIG: &str = r#"{"endpoint_name": {"filter_metadata": "tether", "key": "name"},
    "cookie": {"keys": ["e2e-test-key-0123456789abcdef"], "maxidle": "1h"}}"#;

fn start(endpoints: &[Endpoint], eds: &EdsFile) -> Envoy {
    let config = EnvoyConfig::new(vec![WasmFilter::new("affinity", CONFIG)], &[]).with_eds(eds, endpoints);
    Envoy::start(&config.with_routing(HEADER))
}

fn get(envoy: &Envoy, cookie: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    let r = request(envoy.listener, "GET", "/", &headers).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r
}

/// `SERVERID=<value>` from a response's Set-Cookie, if it sets ours.
fn our_cookie(r: &Response) -> Option<String> {
    r.set_cookie("SERVERID")
}

fn node_of(r: &Response) -> String {
    r.node()
}

/// A browser's session: its cookie and the pod it is on.
struct Session {
    cookie: String,
    pod: String,
}

/// What one round of visits saw: sessions served where they were, moved (a new cookie for
/// another pod), or given a new session by a pod that took their pod's address.
#[derive(Debug, Default, PartialEq, Eq)]
struct Round {
    kept: usize,
    moved: Vec<(String, String)>,
    replaced: usize,
}

/// Every session makes one request; the cookie follows what the response sets.
fn visit(envoy: &Envoy, sessions: &mut [Session]) -> Round {
    let mut round = Round::default();
    for s in sessions.iter_mut() {
        let r = get(envoy, Some(&s.cookie));
        let served = node_of(&r);
        match our_cookie(&r) {
            None => {
                assert_eq!(served, s.pod, "a session left its pod without a new cookie");
                round.kept += 1;
            }
            // The same pod keeps its session without a new cookie (refresh is minutes away).
            Some(cookie) if served == s.pod => panic!("{served} served its own session and re-issued {cookie}"),
            Some(cookie) => {
                round.moved.push((s.pod.clone(), served.clone()));
                s.cookie = cookie;
                s.pod = served;
            }
        }
    }
    round
}

fn new_sessions(envoy: &Envoy, count: usize) -> Vec<Session> {
    (0..count)
        .map(|_| {
            let r = get(envoy, None);
            Session { cookie: our_cookie(&r).expect("a new session gets a cookie"), pod: node_of(&r) }
        })
        .collect()
}

fn on(sessions: &[Session], pod: &str) -> usize {
    sessions.iter().filter(|s| s.pod == pod).count()
}

fn spread(sessions: &[Session]) -> BTreeMap<String, usize> {
    let mut by_pod = BTreeMap::new();
    for s in sessions {
        *by_pod.entry(s.pod.clone()).or_default() += 1;
    }
    by_pod
}

/// Requests from other sessions, one after another, for as long as the churn lasts: idempotent
/// GETs (every answer that is not a 200 is a request a user saw fail) and, with `posts`, every
/// other one a POST to a path of its own (`/post/<n>`), so a POST a node saw twice is a replay.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    moved: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<(Vec<String>, PostOutcome)>>,
}

/// What the load's POSTs met: answered, failed (not retried after they were sent, they may
/// fail when their node dies under them), and retried by Envoy (`x-envoy-attempt-count` > 1).
#[derive(Debug, Default, Clone, Copy)]
struct PostOutcome {
    sent: u64,
    failed: u64,
    retried: u64,
}

impl Load {
    fn start(envoy: &Envoy, cookies: Vec<String>) -> Load {
        Load::start_with(envoy, cookies, false)
    }

    fn start_with(envoy: &Envoy, cookies: Vec<String>, posts: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let [sent, failed, moved] = [(); 3].map(|()| Arc::new(AtomicU64::new(0)));
        let listener = envoy.listener;
        let (stop2, sent2, failed2, moved2) = (stop.clone(), sent.clone(), failed.clone(), moved.clone());
        let thread = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut cookies = cookies;
            let mut post = PostOutcome::default();
            let mut i = 0;
            while !stop2.load(Ordering::SeqCst) {
                let slot = i % cookies.len();
                i += 1;
                if posts && i % 2 == 0 {
                    post.sent += 1;
                    match request(listener, "POST", &format!("/post/{i}"), &[("cookie", &cookies[slot])]) {
                        Ok(r) if r.status == 200 => {
                            let attempts = r.json()["headers"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .find(|h| h[0] == "x-envoy-attempt-count")
                                .and_then(|h| h[1].as_str()?.parse::<u32>().ok())
                                .unwrap_or(1);
                            post.retried += u64::from(attempts > 1);
                            if let Some(c) = our_cookie(&r) {
                                cookies[slot] = c;
                                moved2.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        _ => post.failed += 1,
                    }
                    continue;
                }
                sent2.fetch_add(1, Ordering::SeqCst);
                match request(listener, "GET", "/load", &[("cookie", &cookies[slot])]) {
                    Ok(r) if r.status == 200 => {
                        if let Some(c) = our_cookie(&r) {
                            cookies[slot] = c;
                            moved2.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    other => {
                        failed2.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{other:?}"));
                    }
                }
            }
            (errors, post)
        });
        Load { stop, sent, failed, moved, thread: Some(thread) }
    }

    /// Stops the load: (GETs sent, failed, the failures, new cookies its sessions got).
    fn finish(self) -> (u64, u64, Vec<String>, u64) {
        let (sent, failed, errors, moved, _) = self.finish_with_posts();
        (sent, failed, errors, moved)
    }

    fn finish_with_posts(mut self) -> (u64, u64, Vec<String>, u64, PostOutcome) {
        self.stop.store(true, Ordering::SeqCst);
        let (errors, posts) = self.thread.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        let count = |c: &AtomicU64| c.load(Ordering::SeqCst);
        (count(&self.sent), count(&self.failed), errors, count(&self.moved), posts)
    }
}

#[test]
fn sealed_sessions_through_scale_drain_removal_restart_and_address_reuse() {
    let (a, mut b, mut c) = (TestNode::start("pod-a"), TestNode::start("pod-b"), TestNode::start("pod-c"));
    let mut endpoints =
        vec![Endpoint::new("pod-a", a.addr), Endpoint::new("pod-b", b.addr), Endpoint::new("pod-c", c.addr)];
    let mut eds = EdsFile::new(&endpoints);
    // The samples' retry policies: idempotent requests also after they were sent, others only
    // before (a POST is never replayed).
    let mut config = EnvoyConfig::new(vec![WasmFilter::new("affinity", CONFIG)], &[]).with_eds(&eds, &endpoints);
    config.retry_on = "connect-failure,reset-before-request".to_string();
    config.idempotent_retry_on = Some("connect-failure,reset".to_string());
    config.attempt_count = true;
    let envoy = Envoy::start(&config.with_routing(HEADER));
    let redispatched = "wasmcustom.tether_affinity.redispatched";
    let replaced = "wasmcustom.tether_affinity.endpoint_replaced";

    let mut sessions = new_sessions(&envoy, 45);
    for pod in ["pod-a", "pod-b", "pod-c"] {
        assert!(on(&sessions, pod) > 0, "new sessions spread over every pod: {:?}", spread(&sessions));
    }
    let cookie = &sessions[0].cookie;
    assert!(!cookie.contains("127.0.0.1") && !cookie.contains(&a.addr.port().to_string()), "sealed: {cookie}");
    assert_eq!(visit(&envoy, &mut sessions), Round { kept: 45, ..Round::default() });
    let load = Load::start_with(&envoy, new_sessions(&envoy, 6).into_iter().map(|s| s.cookie).collect(), true);
    let mut moved_total = 0;

    // Scale up 3 → 4: no session moves; new sessions reach the new pod.
    let d = TestNode::start("pod-d");
    endpoints.push(Endpoint::new("pod-d", d.addr));
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    assert_eq!(visit(&envoy, &mut sessions), Round { kept: 45, ..Round::default() }, "scale up");
    let fresh = new_sessions(&envoy, 40);
    assert!(on(&fresh, "pod-d") > 0, "the new pod gets new sessions: {:?}", spread(&fresh));
    sessions.extend(fresh);

    // Drain pod-a: its sessions stay on it; new sessions avoid it.
    let on_a = on(&sessions, "pod-a");
    endpoints[0] = Endpoint::new("pod-a", a.addr).draining();
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    assert_eq!(visit(&envoy, &mut sessions).kept, sessions.len(), "draining keeps every session");
    let fresh = new_sessions(&envoy, 40);
    assert_eq!(on(&fresh, "pod-a"), 0, "a draining pod gets no new session: {:?}", spread(&fresh));

    // Scale down 4 → 3: remove pod-a (still alive and healthy, as a pod in its grace period): its sessions move
    // once, the others stay; a second round moves nothing.
    endpoints.remove(0);
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    let round = visit(&envoy, &mut sessions);
    assert_eq!(round.moved.len(), on_a, "every pod-a session moves: {round:?}");
    assert!(round.moved.iter().all(|(from, to)| from == "pod-a" && to != "pod-a"), "{round:?}");
    moved_total += round.moved.len();
    assert_eq!(visit(&envoy, &mut sessions).kept, sessions.len(), "moved once");
    assert!(envoy.counter_at_least(redispatched, moved_total as u64) >= moved_total as u64);

    let on_b = on(&sessions, "pod-b");
    // pod-b restarts (killed, comes back on a new port with the same name, as a StatefulSet's
    // pod does): its sessions move once. The process answers as "pod-b.2" so the test can tell.
    b.kill();
    let b2 = TestNode::start("pod-b.2");
    endpoints[0] = Endpoint::new("pod-b", b2.addr);
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    let round = visit(&envoy, &mut sessions);
    assert_eq!(round.moved.len(), on_b, "every pod-b session moves once: {round:?}");
    moved_total += round.moved.len();
    assert_eq!(visit(&envoy, &mut sessions).kept, sessions.len(), "moved once");

    // A new pod gets pod-c's address: pod-c's sessions must not pass for sessions of pod-e.
    // Each is answered by pod-e (its address was pinned) and given a new session, once.
    let on_c = on(&sessions, "pod-c");
    let address = c.addr;
    c.kill();
    let e = TestNode::start_on_port("pod-e", address.port());
    endpoints[1] = Endpoint::new("pod-e", address);
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    let mut replaced_sessions = 0;
    for s in sessions.iter_mut().filter(|s| s.pod == "pod-c") {
        let r = get(&envoy, Some(&s.cookie));
        assert_eq!(node_of(&r), "pod-e", "the pinned address now is pod-e");
        s.cookie = our_cookie(&r).expect("a new session for pod-e");
        s.pod = "pod-e".to_string();
        replaced_sessions += 1;
    }
    assert_eq!(replaced_sessions, on_c);
    assert_eq!(visit(&envoy, &mut sessions).kept, sessions.len(), "replaced once");
    assert!(envoy.counter_at_least(replaced, on_c as u64) >= on_c as u64);

    let (sent, failed, errors, load_moved, posts) = load.finish_with_posts();
    // A POST path seen twice by a node still running is a replay (pod-b and pod-c were killed:
    // what they saw is gone, but a replay would have been sent to a live pod afterwards).
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for node in [&a, &b2, &d, &e] {
        for r in node.requests().into_iter().filter(|r| r.method == "POST") {
            *seen.entry(r.path).or_default() += 1;
        }
    }
    let replayed = seen.values().filter(|&&n| n > 1).count();
    let [moves, replacements] = envoy.counters_after_tick([redispatched, replaced]);
    // Every new cookie the filter counted is one a client saw: these sessions' and the load's.
    assert_eq!(moves + replacements, (moved_total + on_c) as u64 + load_moved, "counters against clients");
    eprintln!(
        "dynamic endpoints: {} sessions; moved once {moved_total} (pod-a removed {on_a}, pod-b restarted {on_b}); \
         replaced {on_c} (pod-c's address reused); wrongly moved 0; load {sent} GETs, {failed} failed, {load_moved} of its sessions moved; {} POSTs, {} failed, {} retried before \
         they were sent, {replayed} seen twice; \
         counters redispatched {moves}, endpoint_replaced {replacements}",
        sessions.len(),
        posts.sent,
        posts.failed,
        posts.retried,
    );
    assert_eq!(failed, 0, "idempotent requests failed during the churn: {errors:?}");
    assert_eq!(replayed, 0, "POSTs replayed: {:?}", seen.iter().filter(|(_, &n)| n > 1).collect::<Vec<_>>());
    assert!(sent > 50, "the load ran through the churn ({sent} requests)");
    drop((a, d, e));
}

#[test]
fn forged_tampered_retired_and_vanished_endpoint_cookies_are_new_sessions() {
    let (a, b) = (TestNode::start("pod-a"), TestNode::start("pod-b"));
    let endpoints = [Endpoint::new("pod-a", a.addr), Endpoint::new("pod-b", b.addr)];
    let eds = EdsFile::new(&endpoints);
    let envoy = start(&endpoints, &eds);
    let genuine = our_cookie(&get(&envoy, None)).unwrap();
    let mut tampered = genuine.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let claims = |address: &str| Claims {
        node: String::new(),
        endpoint: Some(address.parse().unwrap()),
        first_seen: 1,
        last_seen: u64::MAX / 2,
    };
    let retired = Key::new(b"a-retired-key-0123456789abcdef").unwrap();
    let key = Key::new(KEY.as_bytes()).unwrap();
    let forged = format!("SERVERID={}", base64_of(&a.addr.to_string()));
    let cases = [
        ("forged", forged, "invalid"),
        ("tampered", String::from_utf8(tampered).unwrap(), "invalid"),
        (
            "retired key",
            format!("SERVERID={}", token::seal(&retired, "SERVERID", &claims(&a.addr.to_string()), [1; 12]).unwrap()),
            "invalid",
        ),
        // Genuine, for an endpoint the cluster no longer has: Envoy's load balancer chooses, the
        // session moves there.
        (
            "vanished endpoint",
            format!("SERVERID={}", token::seal(&key, "SERVERID", &claims("127.0.0.1:9"), [2; 12]).unwrap()),
            "moved",
        ),
    ];
    for (what, cookie, _) in &cases {
        let r = get(&envoy, Some(cookie));
        assert!(our_cookie(&r).is_some(), "{what}: answered normally with a new cookie");
    }
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.invalid_cookie", 3), 3);
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.redispatched", 1), 1);
    assert!(envoy.error_lines().is_empty(), "{:?}", envoy.error_lines());
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Where each project's requests go, by the pod's EDS name (a restarted pod answers as
/// "<name>.2" but is the same endpoint name to Envoy).
fn project_homes(envoy: &Envoy, projects: &[String], cookie: Option<&str>) -> BTreeMap<String, String> {
    projects
        .iter()
        .map(|p| {
            let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
            let r = request(envoy.listener, "GET", &format!("{p}/output/output.pdf"), &headers).unwrap();
            assert_eq!(r.status, 200, "{p}: {r:?}");
            assert!(our_cookie(&r).is_none(), "{p}: a hashed request never touches the session cookie");
            (p.clone(), node_of(&r).trim_end_matches(".2").to_string())
        })
        .collect()
}

fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<(String, String)> {
    before
        .iter()
        .filter(|(p, home)| after.get(*p) != Some(home))
        .map(|(p, home)| (home.clone(), after[p].clone()))
        .collect()
}

fn wait_until_every_cluster_sees(envoy: &Envoy, address: std::net::SocketAddr, healthy: bool) {
    tether_e2e::wait_for(
        &format!("{address} healthy={healthy} in every cluster"),
        std::time::Duration::from_secs(10),
        || {
            let clusters = tether_e2e::eds::cluster_endpoints(envoy);
            let flags: Vec<&String> = clusters
                .values()
                .flat_map(|hosts| hosts.iter().filter(|(a, _)| *a == address).map(|(_, f)| f))
                .collect();
            (flags.len() == clusters.len() && flags.iter().all(|f| (f.as_str() == "healthy") == healthy)).then_some(())
        },
    );
}

#[test]
fn projects_hash_over_live_endpoints_by_name_through_eds_churn() {
    let (a, mut b, c) = (TestNode::start("pod-a"), TestNode::start("pod-b"), TestNode::start("pod-c"));
    let mut endpoints =
        vec![Endpoint::new("pod-a", a.addr), Endpoint::new("pod-b", b.addr), Endpoint::new("pod-c", c.addr)];
    let mut eds = EdsFile::new(&endpoints);
    let chain = vec![
        WasmFilter::new("uri-hash", r#"{"prefixes": ["/project/"], "depth": 2}"#),
        WasmFilter::new("affinity", CONFIG),
    ];
    let mut config = EnvoyConfig::new(chain, &[]).with_eds(&eds, &endpoints).with_routing(HEADER);
    config.hashed_prefixes = vec!["/project/".to_string()];
    let envoy = Envoy::start(&config);
    envoy.wait_for_endpoints(&endpoints);
    let projects: Vec<String> = (0..120).map(|i| format!("/project/{:024x}", i * 7919 + 13)).collect();

    // One project, one pod; a browser's session cookie does not change that (uri-hash decided,
    // affinity leaves the request and its cookie alone).
    let homes = project_homes(&envoy, &projects, None);
    let session = our_cookie(&get(&envoy, None)).unwrap();
    assert_eq!(project_homes(&envoy, &projects, Some(&session)), homes, "stable, cookie or not");
    let per_pod = |homes: &BTreeMap<String, String>, pod: &str| homes.values().filter(|h| *h == pod).count();
    for pod in ["pod-a", "pod-b", "pod-c"] {
        assert!(per_pod(&homes, pod) > 15, "{pod} gets its share: {homes:?}");
    }

    // pod-b restarts on a new address with the same name: no project moves.
    b.kill();
    let b2 = TestNode::start("pod-b.2");
    endpoints[1] = Endpoint::new("pod-b", b2.addr);
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    let after_restart = project_homes(&envoy, &projects, None);
    assert_eq!(moved(&homes, &after_restart), vec![], "a restart with the same name moves nothing");

    // Scale up: only projects that move to the new pod move.
    let d = TestNode::start("pod-d");
    endpoints.push(Endpoint::new("pod-d", d.addr));
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    let after_scale = project_homes(&envoy, &projects, None);
    let to_d = moved(&after_restart, &after_scale);
    assert!(!to_d.is_empty() && to_d.iter().all(|(_, to)| to == "pod-d"), "only to the new pod: {to_d:?}");

    // pod-a fails its health checks: only its projects move; they come back when it recovers.
    a.set_healthy(false);
    wait_until_every_cluster_sees(&envoy, a.addr, false);
    let while_down = project_homes(&envoy, &projects, None);
    let away = moved(&after_scale, &while_down);
    assert_eq!(away.len(), per_pod(&after_scale, "pod-a"), "all of pod-a's projects, no others: {away:?}");
    assert!(away.iter().all(|(from, _)| from == "pod-a"), "{away:?}");
    a.set_healthy(true);
    wait_until_every_cluster_sees(&envoy, a.addr, true);
    assert_eq!(project_homes(&envoy, &projects, None), after_scale, "back after recovery");
    eprintln!(
        "hashed projects: {} over 3 pods; restart with the same name moved 0; scale 3->4 moved {} (all to the new pod); \
         pod-a down moved its {} and they came back",
        projects.len(),
        to_d.len(),
        away.len()
    );
    assert_eq!(envoy.counter("wasmcustom.tether_uri_hash.hashed", 120 * 6), 120 * 6);
    drop((c, d));
}

/// What a sealed cookie says, opened with `key` only.
fn opens_with(cookie: &str, key: &str) -> bool {
    let key = Key::new(key.as_bytes()).unwrap();
    token::open(std::slice::from_ref(&key), "SERVERID", cookie.trim_start_matches("SERVERID=").as_bytes()).is_some()
}

#[test]
fn ecds_rotates_the_key_while_serving_without_a_failed_request_or_a_lost_session() {
    let (a, b) = (TestNode::start("pod-a"), TestNode::start("pod-b"));
    let endpoints = [Endpoint::new("pod-a", a.addr), Endpoint::new("pod-b", b.addr)];
    let eds = EdsFile::new(&endpoints);
    const NEW: &str = "e2e-new-key-0123456789abcdef";
    let keys = |keys: &[&str]| {
        let list: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        format!(r#"{{"cookie": {{"keys": [{}], "maxidle": "1h"}}}}"#, list.join(", "))
    };
    let mut filter = WasmFilter::new("affinity", &keys(&[KEY]));
    let mut ecds = EcdsFile::new(&filter);
    filter.ecds = Some(ecds.path());
    let config = EnvoyConfig::new(vec![filter], &[]).with_eds(&eds, &endpoints).with_routing(HEADER);
    let envoy = Envoy::start(&config);
    let filter = &config.filters[0];
    let mut sessions = new_sessions(&envoy, 20);
    assert!(sessions.iter().all(|s| opens_with(&s.cookie, KEY)));
    let load = Load::start(&envoy, new_sessions(&envoy, 4).into_iter().map(|s| s.cookie).collect());

    // Step 1 of a rotation: the new key signs, the old one still opens. New sessions get the new
    // key; every existing session stays where it is.
    let reloads = EcdsFile::reloads(&envoy, filter);
    ecds.publish(&WasmFilter { config_json: keys(&[NEW, KEY]), ..filter.clone() });
    tether_e2e::wait_for("the new configuration", std::time::Duration::from_secs(10), || {
        (EcdsFile::reloads(&envoy, filter) > reloads).then_some(())
    });
    let fresh = new_sessions(&envoy, 5);
    assert!(fresh.iter().all(|s| opens_with(&s.cookie, NEW) && !opens_with(&s.cookie, KEY)), "sealed with the new key");
    assert_eq!(visit(&envoy, &mut sessions).kept, sessions.len(), "old-key sessions kept");

    // Step 3: the old key retired: its cookies are not genuine any more, answered as new
    // sessions (counted), never an error.
    let reloads = EcdsFile::reloads(&envoy, filter);
    ecds.publish(&WasmFilter { config_json: keys(&[NEW]), ..filter.clone() });
    tether_e2e::wait_for("the last configuration", std::time::Duration::from_secs(10), || {
        (EcdsFile::reloads(&envoy, filter) > reloads).then_some(())
    });
    for s in &sessions {
        let r = get(&envoy, Some(&s.cookie));
        assert!(our_cookie(&r).is_some_and(|c| opens_with(&c, NEW)), "a retired key's session starts anew");
    }
    assert!(envoy.counter_at_least("wasmcustom.tether_affinity.invalid_cookie", 20) >= 20);
    let (sent, failed, errors, _) = load.finish();
    eprintln!("ecds: 2 reconfigurations while serving; {sent} GETs, {failed} failed");
    assert_eq!(failed, 0, "{errors:?}");
    assert!(envoy.error_lines().is_empty(), "{:?}", envoy.error_lines());
}

#[test]
fn a_websocket_on_a_pod_stays_open_while_it_drains_and_after_it_is_removed() {
    let (a, b) = (TestNode::start("pod-a"), TestNode::start("pod-b"));
    let mut endpoints = vec![Endpoint::new("pod-a", a.addr), Endpoint::new("pod-b", b.addr)];
    let mut eds = EdsFile::new(&endpoints);
    let envoy = start(&endpoints, &eds);
    let session = new_sessions(&envoy, 1).remove(0);
    let (mut ws, pod) = ws::connect(envoy.listener, &session.cookie);
    assert_eq!(pod, session.pod);
    assert!(ws::echoes(&mut ws, "before"));
    let home = endpoints.iter().position(|e| e.name == pod).unwrap();

    // Draining: the open socket carries on, and the session's next upgrade still reaches its pod.
    endpoints[home] = endpoints[home].clone().draining();
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    assert!(ws::echoes(&mut ws, "while draining"));
    let (mut second, again) = ws::connect(envoy.listener, &session.cookie);
    assert_eq!(again, pod, "a draining pod keeps its sessions' new sockets");
    assert!(ws::echoes(&mut second, "second"));

    // Removed (the pod still alive, in its grace period): sockets already open are left to
    // finish (Envoy does not cut upgraded streams on removal); the session's next socket goes
    // to a pod Envoy still has.
    endpoints.remove(home);
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    assert!(ws::echoes(&mut ws, "after removal"), "the open socket is not cut");
    let (mut third, elsewhere) = ws::connect(envoy.listener, &session.cookie);
    assert_ne!(elsewhere, pod, "new sockets go to a pod Envoy has");
    assert!(ws::echoes(&mut third, "third"));
}

#[test]
fn a_path_pinned_to_a_pod_by_name_follows_it_through_a_restart_and_leaves_sessions_alone() {
    let (mut a, b) = (TestNode::start("pod-a"), TestNode::start("pod-b"));
    let mut endpoints = vec![Endpoint::new("pod-a", a.addr), Endpoint::new("pod-b", b.addr)];
    let mut eds = EdsFile::new(&endpoints);
    let mut config = EnvoyConfig::new(vec![WasmFilter::new("affinity", CONFIG)], &[]).with_eds(&eds, &endpoints);
    config.pinned_prefixes = vec![("/git/".to_string(), "pod-a".to_string())];
    let envoy = Envoy::start(&config.with_routing(HEADER));
    let git = |cookie: Option<&str>| {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
        request(envoy.listener, "GET", "/git/project.git/info/refs", &headers).unwrap()
    };
    // A browser whose session is on pod-b: its /git/ requests reach pod-a, its session stays.
    let session = loop {
        let s = new_sessions(&envoy, 1).remove(0);
        if s.pod == "pod-b" {
            break s;
        }
    };
    for _ in 0..5 {
        let r = git(Some(&session.cookie));
        // The test node has no repository there (404): what matters is who answered.
        assert_eq!((node_of(&r), our_cookie(&r)), ("pod-a".to_string(), None), "{r:?}");
    }
    assert_eq!(node_of(&get(&envoy, Some(&session.cookie))), "pod-b", "the session did not move");

    // pod-a restarts on a new address with its name: /git/ follows the name.
    a.kill();
    let a2 = TestNode::start("pod-a.2");
    endpoints[0] = Endpoint::new("pod-a", a2.addr);
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    assert_eq!(node_of(&git(None)), "pod-a.2");

    // Gone from EDS: 503 (strict, as overleaf.yaml's /git/), never another pod.
    endpoints.remove(0);
    eds.publish(&endpoints);
    envoy.wait_for_endpoints(&endpoints);
    assert_eq!(git(None).status, 503);
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.redispatched", 0), 0);
    drop((a2, b));
}

#[test]
fn a_hot_project_spills_over_with_bounded_load() {
    // hash_balance_factor 150 (the harness's hashed cluster): no pod takes more than 1.5 times
    // the average of the requests in flight; one project's burst spills to the next pods on
    // its ring instead of piling on one (HAProxy hash-balance-factor).
    let pods = [TestNode::start("pod-a"), TestNode::start("pod-b"), TestNode::start("pod-c")];
    let endpoints: Vec<Endpoint> = pods.iter().map(|p| Endpoint::new(&p.name, p.addr)).collect();
    let eds = EdsFile::new(&endpoints);
    let mut config =
        EnvoyConfig::new(vec![WasmFilter::new("uri-hash", r#"{"prefixes": ["/project/"], "depth": 2}"#)], &[])
            .with_eds(&eds, &endpoints)
            .with_routing(HEADER);
    config.hashed_prefixes = vec!["/project/".to_string()];
    let envoy = Envoy::start(&config);
    envoy.wait_for_endpoints(&endpoints);
    let path = "/project/5f3c00000000000000000000/compile";
    let home = node_of(&request(envoy.listener, "GET", path, &[]).unwrap());
    // One at a time, the project stays on its pod.
    for _ in 0..5 {
        assert_eq!(node_of(&request(envoy.listener, "GET", path, &[]).unwrap()), home);
    }
    // 24 requests in flight together: each held 1.5 s by its pod, started 25 ms apart. Envoy counts
    // a request as active only once its upstream connection is up, so requests started in the
    // same instant all see the home pod idle and overshoot the bound; spaced out, each sees the
    // load the others put there.
    let listener = envoy.listener;
    let burst: Vec<_> = (0..24)
        .map(|_| {
            let t = std::thread::spawn(move || {
                node_of(&request(listener, "GET", path, &[("x-test-delay-ms", "1500")]).unwrap())
            });
            std::thread::sleep(Duration::from_millis(25));
            t
        })
        .collect();
    let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
    for t in burst {
        *per_pod.entry(t.join().unwrap()).or_default() += 1;
    }
    eprintln!("bounded load: 24 concurrent requests of one project: {per_pod:?} (home {home})");
    // A pod is full at ceil(1.5 x (active + 1) / 3) requests: the home pod takes about half the
    // burst, the next pod on the ring the rest. Without the factor all 24 go home.
    assert!(per_pod.len() > 1, "the burst spilled over: {per_pod:?}");
    assert!(per_pod.values().all(|&n| n <= 24 / 2 + 1), "no pod above 1.5 x its share of 24: {per_pod:?}");
}
