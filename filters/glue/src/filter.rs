//! A filter as a library: a type that takes its configuration and decides per callback through
//! tether-core, plus the generic proxy-wasm contexts that run it. A module is one line
//! ([`crate::module!`]); tether-edge is a filter made of the five.

use crate::host::{property, Host, HostKind, Map, ProxyWasmHost};
use crate::stream::{routed_by_property, unwritable_on_nginx, write_edits, Callback, Memo};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use tether_core::config::{read_document, Value};
use tether_core::headers::HeaderMap;
use tether_core::plan::LocalReply;

/// Implementations keep `from_config`, `on_request` and `on_response` out of line
/// (`#[inline(never)]`), and the policies their `from_value`. Envoy's V8 compiles every function
/// of a module with TurboFan (proxy-wasm-cpp-host turns Liftoff off), and what that holds of
/// Envoy's memory followed the largest functions, not the module's size: tether-edge with the
/// five filters inlined into one 22 KB request function and a 47 KB `configure` held 106 MiB
/// RSS, split 98 (5 runs each, Envoy 1.40.0, `--concurrency 1`); the 608 KB module of before
/// issue 14's size work, 105. Out of line costs tether-edge 43 Wasm instructions per request.
pub trait Filter: Sized + 'static {
    /// What the filter remembers of one request between callbacks.
    type Request: Default;

    /// The filter's name in log lines (`forwarded: invalid configuration: ...`).
    const NAME: &'static str;

    /// The filter for its configuration, read as JSON (from JSON text or Struct bytes: the root
    /// context reads the document); `None` after logging one line that says why it is refused.
    fn from_config(config: Value) -> Option<Self>;

    /// Whether the request callback needs the request headers (one host call to read them).
    fn reads_request_headers(&self, _end_of_stream: bool) -> bool {
        true
    }

    fn on_request(&self, request: &mut Self::Request, cx: &mut Callback<'_>, end_of_stream: bool);

    fn on_request_body(&self, _request: &mut Self::Request, _cx: &mut Callback<'_>, _chunk_len: usize) {}

    fn on_response(&self, _request: &mut Self::Request, _cx: &mut Callback<'_>) {}

    /// The routing contract's session header, for a routing filter: the response's copy tells
    /// which endpoint served.
    fn session_header(&self) -> Option<&str> {
        None
    }

    /// Whether a routing decision must be told to routing filters in later VMs through
    /// `tether.routed_by` (one host call). Not after affinity, the last by precedence.
    fn marks_route_for_later_vms(&self) -> bool {
        true
    }
}

/// The root context of a module whose filter is `F`.
pub struct Root<F: Filter> {
    filter: Option<Rc<F>>,
}

impl<F: Filter> Default for Root<F> {
    fn default() -> Self {
        Root { filter: None }
    }
}

impl<F: Filter> Context for Root<F> {
    /// The VM is going away: counts not yet handed over go now.
    fn on_done(&mut self) -> bool {
        crate::vm::flush();
        true
    }
}

impl<F: Filter> RootContext for Root<F> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = crate::plugin_configuration() else { return false };
        let config = match read_document(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("{}: invalid configuration: {e}", F::NAME);
                return false;
            }
        };
        self.filter = F::from_config(config).map(Rc::new);
        if self.filter.is_some() {
            crate::vm::start_ticking();
        }
        self.filter.is_some()
    }

    fn on_tick(&mut self) {
        crate::vm::tick();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(self.filter.clone()?, ProxyWasmHost)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request through filter `F`: each callback reads the map once, runs the filter, and
/// writes its edits back in as few host calls as it can.
pub struct Stream<F: Filter, H: Host> {
    filter: Rc<F>,
    host: H,
    request: F::Request,
    memo: Memo,
    /// A local reply went out: the request goes no further.
    replied: bool,
}

impl<F: Filter, H: Host> Stream<F, H> {
    pub fn new(filter: Rc<F>, host: H) -> Stream<F, H> {
        Stream { filter, host, request: F::Request::default(), memo: Memo::default(), replied: false }
    }

    /// Writes back what a request-side callback decided; `Pause` after a local reply.
    fn finish_request(
        &mut self,
        headers: &HeaderMap,
        reply: Option<LocalReply>,
        routed_by: Option<&'static str>,
    ) -> Action {
        if reply.is_none() && !headers.edits().is_empty() && self.host.kind() == HostKind::Nginx {
            if let Some(name) = unwritable_on_nginx(headers) {
                return self.reply(Some(repeated_header_refused(name)));
            }
        }
        write_edits(&self.host, Map::Request, headers);
        if let Some(by) = routed_by {
            let kind = self.host.kind();
            if kind == HostKind::Nginx {
                self.route_nginx(headers);
            }
            if self.filter.marks_route_for_later_vms()
                && !self.host.set_property(routed_by_property(kind), by.as_bytes())
            {
                log::warn!("cannot mark the request routed ({})", property::display(routed_by_property(kind)));
            }
        }
        self.reply(reply)
    }

    // The nginx-only functions here are `#[cold]` and out of line: Envoy never reaches them, and
    // inlined they cost Envoy's request path 0.3k-0.4k Wasm instructions per filter (costs bin).
    /// nginx's half of the routing contract: the chosen node's `ip:port` (or, without a nodes
    /// table, the key to hash) goes into `$tether_node`, which the configuration maps to that
    /// node's `upstream {}` group (its siblings as `backup`), as nginx/overleaf.conf does.
    #[cold]
    #[inline(never)]
    fn route_nginx(&self, headers: &HeaderMap) {
        let mut text = String::new();
        let target = match self.memo.pinned {
            Some(address) => {
                tether_core::ascii::push_socket_addr(&mut text, address);
                text.as_bytes()
            }
            None => self.filter.session_header().and_then(|h| headers.get(h)).unwrap_or_default(),
        };
        if !self.host.set_property(property::NGINX_NODE, target) {
            nginx_variable_refused();
        }
    }

    /// Sends a local reply if one was decided: the request then goes no further (`Pause`).
    fn reply(&mut self, reply: Option<LocalReply>) -> Action {
        let Some(reply) = reply else { return Action::Continue };
        self.host.send_reply(&reply);
        self.replied = true;
        Action::Pause
    }

    /// One header map, in one host call, its names lower case as policies look them up.
    fn read(&self, map: Map) -> HeaderMap {
        let raw = self.host.header_map(map);
        if self.host.lowercase_names() {
            HeaderMap::from_lowercase_raw(raw)
        } else {
            HeaderMap::from_raw(raw)
        }
    }

    pub fn request_headers(&mut self, end_of_stream: bool) -> Action {
        let mut headers = if self.filter.reads_request_headers(end_of_stream) {
            self.read(Map::Request)
        } else {
            HeaderMap::default()
        };
        let mut cx = Callback::new(&mut headers, &self.host, &mut self.memo);
        self.filter.on_request(&mut self.request, &mut cx, end_of_stream);
        let (reply, routed_by) = (cx.reply.take(), cx.routed_by);
        self.finish_request(&headers, reply, routed_by)
    }

    pub fn request_body(&mut self, chunk_len: usize) -> Action {
        if self.replied {
            return Action::Pause; // refused: nothing more goes upstream
        }
        let mut headers = HeaderMap::default();
        let mut cx = Callback::new(&mut headers, &self.host, &mut self.memo);
        self.filter.on_request_body(&mut self.request, &mut cx, chunk_len);
        let reply = cx.reply.take();
        self.reply(reply)
    }

    pub fn response_headers(&mut self) -> Action {
        let mut headers = self.read(Map::Response);
        self.memo.echo = self.filter.session_header().and_then(|h| headers.get(h)).map(<[u8]>::to_vec);
        let mut cx = Callback::new(&mut headers, &self.host, &mut self.memo);
        self.filter.on_response(&mut self.request, &mut cx);
        write_edits(&self.host, Map::Response, &headers);
        Action::Continue
    }
}

/// The 400 for a request whose repeated header nginx cannot clean (counted per VM).
#[cold]
#[inline(never)]
fn repeated_header_refused(name: &str) -> LocalReply {
    thread_local! {
        static REFUSED: std::cell::OnceCell<crate::Counter> = const { std::cell::OnceCell::new() };
    }
    REFUSED.with(|c| c.get_or_init(|| crate::Counter::define("tether_nginx.repeated_header_refused")).increment());
    log::debug!("refused: request header {name} on more than one line");
    LocalReply {
        status: 400,
        headers: vec![("content-type", "text/plain".into())],
        body: format!("400 Bad Request: send the {name} header once\n").into_bytes(),
    }
}

/// `$tether_node` is not declared (or not changeable): every request goes to the default pool.
#[cold]
#[inline(never)]
fn nginx_variable_refused() {
    thread_local! {
        static SEEN: std::cell::OnceCell<crate::Misconfiguration> = const { std::cell::OnceCell::new() };
    }
    SEEN.with(|seen| {
        seen.get_or_init(|| crate::Misconfiguration::define("tether_routing.nginx_variable_refused")).report(|| {
            "routing: nginx refused $tether_node: declare it with `set $tether_node \"\";` in the server block and \
             proxy_pass through a map of it (nginx/overleaf.conf); until then requests ignore sessions and pins"
                .to_string()
        })
    });
}

impl<F: Filter, H: Host> Context for Stream<F, H> {}

// Every stream callback a filter may implement; the module's build removes the exports of
// those it does not (Cargo.toml, [package.metadata.tether]), so Envoy never enters the VM for them.
impl<F: Filter, H: Host> HttpContext for Stream<F, H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.request_headers(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.request_body(body_size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.response_headers()
    }
}

/// The module entry of a filter: `tether_glue::module!(tether_affinity::Affinity);`.
#[macro_export]
macro_rules! module {
    ($filter:ty) => {
        $crate::proxy_wasm::main! {{
            $crate::proxy_wasm::set_log_level($crate::proxy_wasm::types::LogLevel::Trace);
            $crate::proxy_wasm::set_root_context(|_| -> Box<dyn $crate::proxy_wasm::traits::RootContext> {
                Box::new($crate::Root::<$filter>::default())
            });
        }}
    };
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap or index is a failed test.
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use crate::host::Map;
    use std::cell::RefCell;
    use tether_core::headers::Edit;
    use tether_core::plan::{Plan, Route};

    /// A host that records every call and holds one stream's maps.
    #[derive(Default)]
    struct MockHost {
        nginx: bool,
        /// Not known to lower header names (not Envoy).
        keeps_case: bool,
        /// The one shared-data value, whatever the key.
        shared: RefCell<Option<Vec<u8>>>,
        calls: RefCell<Vec<String>>,
        request: RefCell<Vec<u8>>,
        response: RefCell<Vec<u8>>,
    }

    impl MockHost {
        fn with(request: &[(&str, &str)], response: &[(&str, &str)]) -> MockHost {
            MockHost {
                request: RefCell::new(HeaderMap::from_pairs(request.iter().copied()).encoded()),
                response: RefCell::new(HeaderMap::from_pairs(response.iter().copied()).encoded()),
                ..MockHost::default()
            }
        }
        fn call(&self, c: String) {
            self.calls.borrow_mut().push(c);
        }
        /// The host's map after one edit, as Envoy applies it.
        fn apply(&self, map: Map, name: &str, edit: Edit) {
            let stored = match map {
                Map::Request => &self.request,
                Map::Response => &self.response,
            };
            let mut edited = HeaderMap::from_raw(stored.borrow().clone());
            edited.edit(name.to_string(), edit);
            *stored.borrow_mut() = edited.encoded();
        }
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl Host for &MockHost {
        fn kind(&self) -> HostKind {
            if self.nginx {
                HostKind::Nginx
            } else {
                HostKind::Envoy
            }
        }
        fn lowercase_names(&self) -> bool {
            !self.keeps_case
        }
        fn header_map(&self, map: Map) -> Vec<u8> {
            self.call(format!("read {map:?}"));
            match map {
                Map::Request => self.request.borrow().clone(),
                Map::Response => self.response.borrow().clone(),
            }
        }
        fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) {
            // "true": a value, "empty": an empty one, "false": removed.
            let what = value.map_or("false", |v| if v.is_empty() { "empty" } else { "true" });
            self.call(format!("set {map:?} {name} {what}"));
            self.apply(map, name, value.map_or(Edit::Remove, |v| Edit::Set(v.to_vec().into())));
        }
        fn add_header(&self, map: Map, name: &str, value: &[u8]) {
            self.call(format!("add {map:?} {name}"));
            self.apply(map, name, Edit::Add(value.to_vec().into()));
        }
        fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
            self.call(format!("property {}", property::display(path)));
            None
        }
        fn set_property(&self, path: &[u8], value: &[u8]) -> bool {
            self.call(format!("set_property {} {}", property::display(path), String::from_utf8_lossy(value)));
            true
        }
        fn now_ms(&self) -> u64 {
            self.call("now".into());
            0
        }
        fn send_reply(&self, reply: &LocalReply) {
            self.call(format!("reply {}", reply.status));
        }
        fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.call(format!("shared_data {key}"));
            (self.shared.borrow().clone(), Some(1))
        }
        fn set_shared_data(&self, key: &str, value: &[u8], _: Option<u32>) -> bool {
            self.call(format!("set_shared_data {key}"));
            *self.shared.borrow_mut() = Some(value.to_vec());
            true
        }
    }

    /// A filter whose plans are given: request edits, a reply, a route; one response edit.
    #[derive(Default)]
    struct Scripted {
        request: Plan,
        response: Plan,
        marks: bool,
    }

    impl Filter for Scripted {
        type Request = ();
        const NAME: &'static str = "scripted";
        fn from_config(_: Value) -> Option<Self> {
            None
        }
        fn on_request(&self, _: &mut (), cx: &mut Callback<'_>, _: bool) {
            cx.apply(self.request.clone());
        }
        fn on_response(&self, _: &mut (), cx: &mut Callback<'_>) {
            use tether_core::plan::Facts as _;
            let _ = cx.facts.served();
            cx.apply(self.response.clone());
        }
        fn session_header(&self) -> Option<&str> {
            Some("x-tether-session")
        }
        fn marks_route_for_later_vms(&self) -> bool {
            self.marks
        }
    }

    fn run(filter: Scripted, host: &MockHost) -> (Action, Action) {
        let mut stream = Stream::new(Rc::new(filter), host);
        (stream.request_headers(true), stream.response_headers())
    }

    #[test]
    fn one_read_per_map_and_one_call_per_edit() {
        let mut request = Plan::default();
        request.set("x-forwarded-for", "192.0.2.1");
        request.set("x-forwarded-proto", "https");
        request.remove("x-real-ip");
        let host = MockHost::with(&[(":path", "/"), ("x-real-ip", "1.1.1.1")], &[]);
        let (action, _) = run(Scripted { request, ..Scripted::default() }, &host);
        assert_eq!(action, Action::Continue);
        // The pinned-nowhere response asks upstream.address for the served endpoint.
        assert_eq!(
            host.calls(),
            [
                "read Request",
                "set Request x-forwarded-for true",
                "set Request x-forwarded-proto true",
                "set Request x-real-ip false",
                "read Response",
                "property upstream.address"
            ]
        );
        let written = HeaderMap::from_raw(host.request.borrow().clone());
        assert_eq!(written.get("x-forwarded-proto"), Some(&b"https"[..]));
        assert_eq!(written.get("x-real-ip"), None);
        assert_eq!(written.get(":path"), Some(&b"/"[..]));
    }

    #[test]
    fn shared_data_every_request_reads_is_read_once_per_tick_and_this_vms_writes_at_once() {
        use crate::stream::{Memo, StreamFacts};
        use tether_core::plan::Facts as _;
        let host = MockHost::default();
        *host.shared.borrow_mut() = Some(b"one".to_vec());
        let facts = |memo: &mut Memo, f: &mut dyn FnMut(&mut StreamFacts<'_>) -> Option<Vec<u8>>| {
            let h: &dyn Host = &&host;
            f(&mut StreamFacts::new(h, memo))
        };
        let recent = |memo: &mut Memo| facts(memo, &mut |f| f.recent_shared_data("down"));
        let reads = || host.calls().iter().filter(|c| *c == "shared_data down").count();
        // Before the host ticks (it may never): every read asks.
        recent(&mut Memo::default());
        recent(&mut Memo::default());
        assert_eq!(reads(), 2);
        crate::vm::tick();
        assert_eq!(recent(&mut Memo::default()).as_deref(), Some(&b"one"[..]));
        *host.shared.borrow_mut() = Some(b"another worker's".to_vec());
        assert_eq!(recent(&mut Memo::default()).as_deref(), Some(&b"one"[..]), "kept until the tick");
        assert_eq!(reads(), 3);
        // This VM's own write is seen at once, without a read.
        facts(&mut Memo::default(), &mut |f| f.set_shared_data("down", b"mine", Some(1)).then(Vec::new));
        assert_eq!(recent(&mut Memo::default()).as_deref(), Some(&b"mine"[..]));
        assert_eq!(reads(), 3);
        *host.shared.borrow_mut() = Some(b"another worker's".to_vec());
        crate::vm::tick();
        assert_eq!(recent(&mut Memo::default()).as_deref(), Some(&b"another worker's"[..]), "read anew");
        assert_eq!(reads(), 4);
    }

    #[test]
    fn names_in_the_clients_case_are_lowered_unless_the_host_is_envoy() {
        // A forged `X-Real-IP` in the client's case: on a host that keeps it, the policy must
        // still see the header to remove it.
        struct RemovesWhatItSees;
        impl Filter for RemovesWhatItSees {
            type Request = ();
            const NAME: &'static str = "removes-what-it-sees";
            fn from_config(_: Value) -> Option<Self> {
                None
            }
            fn on_request(&self, _: &mut (), cx: &mut Callback<'_>, _: bool) {
                if cx.headers.contains("x-real-ip") {
                    let mut plan = Plan::default();
                    plan.remove("x-real-ip");
                    cx.apply(plan);
                }
            }
        }
        let host = MockHost { keeps_case: true, ..MockHost::default() };
        *host.request.borrow_mut() = HeaderMap::encode(&[(b":path", b"/"), (b"X-Real-IP", b"1.1.1.1")]);
        Stream::new(Rc::new(RemovesWhatItSees), &host).request_headers(true);
        assert_eq!(host.calls(), ["read Request", "set Request x-real-ip false"]);
    }

    #[test]
    fn a_single_edit_is_a_single_call_and_none_is_none() {
        let mut response = Plan::default();
        response.add("x-served-by", "n1");
        let host = MockHost::with(&[], &[]);
        run(Scripted { response, ..Scripted::default() }, &host);
        assert_eq!(
            host.calls(),
            ["read Request", "read Response", "property upstream.address", "add Response x-served-by"]
        );
    }

    #[test]
    fn a_route_is_marked_for_later_vms_only_when_one_may_follow_and_the_pin_answers_served() {
        let route = |marks| {
            let mut request = Plan::default();
            request.set("x-tether-session", "MTI3LjAuMC4xOjgwMDE=");
            request.route = Some(Route { by: "path-pin", address: "127.0.0.1:8001".parse().ok() });
            Scripted { request, marks, ..Scripted::default() }
        };
        let host = MockHost::with(&[], &[]);
        run(route(true), &host);
        // No session header in the response: the pinned endpoint served, no property asked.
        assert_eq!(
            host.calls(),
            [
                "read Request",
                "set Request x-tether-session true",
                "set_property tether.routed_by path-pin",
                "read Response"
            ]
        );
        let host = MockHost::with(&[], &[]);
        run(route(false), &host);
        assert!(!host.calls().iter().any(|c| c.starts_with("set_property")));
    }

    #[test]
    fn on_nginx_the_node_goes_into_its_variable_edits_go_one_by_one_and_upstream_address_tells_who_served() {
        let mut request = Plan::default();
        request.set("x-tether-session", "MTI3LjAuMC4xOjgwMDE=");
        request.set("x-forwarded-proto", "https");
        request.route = Some(Route { by: "path-pin", address: "127.0.0.1:8001".parse().ok() });
        let host = MockHost { nginx: true, ..MockHost::with(&[], &[]) };
        run(Scripted { request, marks: true, ..Scripted::default() }, &host);
        assert_eq!(
            host.calls(),
            [
                "read Request",
                "set Request x-tether-session true",
                "set Request x-forwarded-proto true",
                "set_property ngx.tether_node 127.0.0.1:8001",
                "set_property wasmx.tether_routed_by path-pin",
                "read Response",
                // A backup server may have served: the pin does not say, upstream.address does.
                "property upstream.address",
            ]
        );

        // Without a nodes table (uri-hash's key for nginx's `hash`), the key is the value.
        let mut request = Plan::default();
        request.set("x-tether-session", "cHJvamVjdC8x");
        request.route = Some(Route { by: "uri-hash", address: None });
        let host = MockHost { nginx: true, ..MockHost::with(&[], &[]) };
        run(Scripted { request, ..Scripted::default() }, &host);
        assert!(host.calls().contains(&"set_property ngx.tether_node cHJvamVjdC8x".to_string()), "{:?}", host.calls());
    }

    #[test]
    fn on_nginx_a_removed_request_line_is_emptied_and_a_repeated_one_refuses_the_request() {
        let mut request = Plan::default();
        request.remove("x-real-ip");
        let host = MockHost { nginx: true, ..MockHost::with(&[("x-real-ip", "6.6.6.6")], &[]) };
        run(Scripted { request: request.clone(), ..Scripted::default() }, &host);
        assert_eq!(host.calls()[..2], ["read Request", "set Request x-real-ip empty"]);

        let host =
            MockHost { nginx: true, ..MockHost::with(&[("x-real-ip", "6.6.6.6"), ("X-Real-IP", "7.7.7.7")], &[]) };
        let mut stream = Stream::new(Rc::new(Scripted { request, ..Scripted::default() }), &host);
        assert_eq!(stream.request_headers(true), Action::Pause);
        assert_eq!(host.calls(), ["read Request", "reply 400"]);
    }

    #[test]
    fn a_local_reply_pauses_the_request_and_its_body() {
        let mut request = Plan::default();
        request.reply(LocalReply { status: 413, headers: Vec::new(), body: Vec::new() });
        let host = MockHost::with(&[], &[]);
        let mut stream = Stream::new(Rc::new(Scripted { request, ..Scripted::default() }), &host);
        assert_eq!(stream.request_headers(false), Action::Pause);
        assert_eq!(stream.request_body(10), Action::Pause);
        assert_eq!(host.calls(), ["read Request", "reply 413"]);
    }
}
