//! The body-limit filter's proxy-wasm contexts: its root (configuration, metrics) and its
//! per-request context. Compiled into this filter's module (lib.rs) and, by path, into
//! tether-edge's single module.

use log::debug;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use tether_core::body_limit::{
    check_headers, parse_content_length, rejection, BodyCounter, BodyLimitPolicy, DeclaredLength, HeadersVerdict,
    Limit, Reason,
};
use tether_glue::{configure, configure_root, request_header, Counter};

#[derive(Default)]
struct Metrics {
    rejected_declared: Counter,
    rejected_streamed: Counter,
    invalid_content_length: Counter,
}

impl Metrics {
    fn define() -> Metrics {
        Metrics {
            rejected_declared: Counter::define("tether_body_limit.rejected.declared_too_large"),
            rejected_streamed: Counter::define("tether_body_limit.rejected.streamed_too_large"),
            invalid_content_length: Counter::define("tether_body_limit.invalid_content_length"),
        }
    }

    fn rejected(&self, reason: Reason) {
        match reason {
            Reason::DeclaredTooLarge => self.rejected_declared.increment(),
            Reason::StreamedTooLarge => self.rejected_streamed.increment(),
        }
    }
}

#[derive(Default)]
pub struct BodyLimitRoot {
    policy: Option<Rc<BodyLimitPolicy>>,
    metrics: Rc<Metrics>,
}

impl BodyLimitRoot {
    /// The root for configuration `json` (JSON text or Struct bytes), as `on_configure` builds
    /// it; `None` after logging why the configuration is refused. tether-edge calls this with
    /// its section of a combined configuration.
    pub fn from_config(json: &[u8]) -> Option<BodyLimitRoot> {
        let policy = configure("body-limit", json, BodyLimitPolicy::from_json, BodyLimitPolicy::summary)?;
        Some(BodyLimitRoot { policy: Some(Rc::new(policy)), metrics: Rc::new(Metrics::define()) })
    }
}

impl Context for BodyLimitRoot {}

impl RootContext for BodyLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        configure_root(self, Self::from_config)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let policy = self.policy.clone()?;
        let metrics = Rc::clone(&self.metrics);
        Some(Box::new(BodyLimitRequest { policy, metrics, context_id, counter: None, rejected: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct BodyLimitRequest {
    policy: Rc<BodyLimitPolicy>,
    metrics: Rc<Metrics>,
    context_id: u32,
    counter: Option<BodyCounter>,
    rejected: bool,
}

impl BodyLimitRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        request_header(self.context_id, name)
    }

    fn reject(&mut self, limit: u64, reason: Reason) -> Action {
        let r = rejection(limit);
        debug!("body-limit: 413 ({reason:?}), limit {limit} bytes");
        self.metrics.rejected(reason);
        self.rejected = true;
        self.send_http_response(r.status, r.headers.to_vec(), Some(r.body.as_bytes()));
        Action::Pause
    }
}

impl Context for BodyLimitRequest {}

impl HttpContext for BodyLimitRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            return Action::Continue; // no body follows
        }
        let method = if self.policy.needs_method() { self.header(":method") } else { None };
        let path = if self.policy.needs_path() { self.header(":path") } else { None };
        let limit = self.policy.limit_for(method.as_deref().unwrap_or_default(), path.as_deref().unwrap_or_default());
        let declared = match limit {
            Limit::Unlimited => DeclaredLength::Absent,
            Limit::Bytes(_) => parse_content_length(self.header("content-length").as_deref()),
        };
        if declared == DeclaredLength::Invalid {
            self.metrics.invalid_content_length.increment();
        }
        match check_headers(limit, declared) {
            HeadersVerdict::Pass => Action::Continue,
            HeadersVerdict::Reject { limit } => self.reject(limit, Reason::DeclaredTooLarge),
            HeadersVerdict::Count(counter) => {
                self.counter = Some(counter);
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.rejected {
            return Action::Pause;
        }
        let Some(counter) = self.counter.as_mut() else {
            return Action::Continue;
        };
        if counter.admit(body_size) {
            return Action::Continue;
        }
        // Pausing keeps this chunk out of the upstream; the local reply resets that request.
        let limit = counter.limit();
        self.reject(limit, Reason::StreamedTooLarge)
    }
}
