//! The OpenTelemetry layer, minus its work on every poll and on every
//! info line.
//!
//! - `tracing-opentelemetry` stamps a span's end time on every exit (a
//!   write lock on the span's extensions, a mutex and a clock read), so
//!   that a span closed long after its last exit still ends at that exit.
//!   A session's span is entered and exited on every poll of its two tasks,
//!   which is several times per message, and its end time is only read
//!   once, when it closes. Our spans close where their work ends (a message
//!   span when the message is handled, the session span when its tasks
//!   finish), so ending each one at close gives the same trace without the
//!   per-poll cost.
//! - Only warnings and errors become span events: an info line would be
//!   kept in its span's memory until the span ends (the `session opened`
//!   line for a session's whole life) only to repeat what the logs, one
//!   click away by trace id, already hold. This is checked here, in the one
//!   callback that needs it, rather than by a per-layer filter, which looks
//!   the span up in the registry on every enter and exit to ask whether
//!   this layer sees it (it sees every span).

use std::any::TypeId;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Forwards everything to the wrapped layer except `on_enter`/`on_exit`,
/// and only the events that [`becomes_span_event`].
pub struct OtelSpans<L>(pub L);

/// Warnings and errors: what the trace backend shows on a span.
fn becomes_span_event(metadata: &Metadata<'_>) -> bool {
    *metadata.level() <= tracing::Level::WARN
}

impl<S, L> Layer<S> for OtelSpans<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber)
    }
    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber)
    }
    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx)
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }
    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(span, values, ctx)
    }
    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(span, follows, ctx)
    }
    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, ctx)
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if becomes_span_event(event.metadata()) {
            self.0.on_event(event, ctx)
        }
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx)
    }
    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx)
    }
    // `OpenTelemetrySpanExt` finds the OpenTelemetry layer by downcasting.
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: forwarded unchanged to the wrapped layer, which upholds
        // the contract for its own types.
        unsafe { self.0.downcast_raw(id) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// What the wrapped layer is shown: each callback by name.
    #[derive(Clone, Default)]
    struct Shown(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Shown {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            self.push(format!("new {}", attrs.metadata().name()));
        }
        fn on_enter(&self, _: &Id, _: Context<'_, S>) {
            self.push("enter".into());
        }
        fn on_exit(&self, _: &Id, _: Context<'_, S>) {
            self.push("exit".into());
        }
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.push(format!("event {}", event.metadata().level()));
        }
        fn on_close(&self, _: Id, _: Context<'_, S>) {
            self.push("close".into());
        }
    }

    impl Shown {
        fn push(&self, what: String) {
            self.0.lock().unwrap().push(what);
        }
    }

    #[test]
    fn spans_pass_whole_but_enters_exits_and_info_lines_do_not() {
        let shown = Shown::default();
        let subscriber = tracing_subscriber::registry().with(OtelSpans(shown.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("ws.session");
            span.in_scope(|| {
                tracing::info!("session opened");
                tracing::warn!("request refused");
                tracing::error!("handler panicked");
            });
        });
        assert_eq!(
            *shown.0.lock().unwrap(),
            ["new ws.session", "event WARN", "event ERROR", "close"]
        );
    }
}
