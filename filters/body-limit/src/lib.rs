//! tether-body-limit: the request body limit (HAProxy's 50 MB, nginx `client_max_body_size`),
//! streaming, with a clear 413.
//!
//! A library: [`BodyLimit`] is the filter (tether-glue runs it; `module/` is its Wasm module,
//! tether-edge runs it with the others). Every decision is `tether_core::body_limit`'s.
//!
//! Host calls per request: none for a request without a body; otherwise one read of the
//! request headers; none per body chunk unless the chunk is refused (then the 413).

use log::debug;
use tether_core::body_limit::{BodyLimitPolicy, BodyLimitRequest, Reason};
use tether_core::config::Value;
use tether_glue::{configure, Callback, Counter, Filter};

struct Metrics {
    rejected_declared: Counter,
    rejected_streamed: Counter,
    invalid_content_length: Counter,
}

pub struct BodyLimit {
    policy: BodyLimitPolicy,
    metrics: Metrics,
}

impl BodyLimit {
    fn count_rejection(&self, request: &BodyLimitRequest) {
        let Some((reason, limit)) = request.rejected else { return };
        match reason {
            Reason::DeclaredTooLarge => self.metrics.rejected_declared.increment(),
            Reason::StreamedTooLarge => self.metrics.rejected_streamed.increment(),
        }
        debug!("body-limit: 413 ({reason:?}), limit {limit} bytes");
    }
}

impl Filter for BodyLimit {
    type Request = BodyLimitRequest;

    const NAME: &'static str = "body-limit";

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn from_config(config: Value) -> Option<BodyLimit> {
        let policy = configure(Self::NAME, config, BodyLimitPolicy::from_value, BodyLimitPolicy::summary)?;
        let metrics = Metrics {
            rejected_declared: Counter::define("tether_body_limit.rejected.declared_too_large"),
            rejected_streamed: Counter::define("tether_body_limit.rejected.streamed_too_large"),
            invalid_content_length: Counter::define("tether_body_limit.invalid_content_length"),
        };
        Some(BodyLimit { policy, metrics })
    }

    /// A request without a body costs no host call.
    fn reads_request_headers(&self, end_of_stream: bool) -> bool {
        !end_of_stream
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_request(&self, request: &mut BodyLimitRequest, cx: &mut Callback<'_>, end_of_stream: bool) {
        let (plan, decided) = self.policy.on_request(cx.headers, end_of_stream);
        if decided.invalid_length {
            self.metrics.invalid_content_length.increment();
        }
        *request = decided;
        self.count_rejection(request);
        cx.apply(plan);
    }

    fn on_request_body(&self, request: &mut BodyLimitRequest, cx: &mut Callback<'_>, chunk_len: usize) {
        let plan = self.policy.on_body(request, chunk_len);
        if plan.reply.is_some() {
            self.count_rejection(request);
        }
        cx.apply(plan);
    }
}
