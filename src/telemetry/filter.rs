//! The global filter: `RUST_LOG` syntax, at no cost per span entered.
//!
//! `EnvFilter` supports span and field directives (`[ws.session]=debug`,
//! `wstrace[{session_id=…}]=trace`), and pays for them on every enter and
//! exit of every span: a read lock on its map of spans it cares about. A
//! session's span is entered and exited on every poll of its two tasks.
//! When every directive is a plain `target=level` or a bare level, as ours
//! are by default, `Targets` filters exactly the same way with nothing kept
//! per span; any other directive still gets the full `EnvFilter`.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{ParseError, Targets};
use tracing_subscriber::registry::LookupSpan;

/// `Targets` or `EnvFilter`, whichever the directives need (see
/// [`GlobalFilter::parse`]).
pub struct GlobalFilter {
    targets: Option<Targets>,
    env: Option<EnvFilter>,
}

impl GlobalFilter {
    pub fn parse(directives: &str) -> Result<Self, ParseError> {
        // Parsed as an `EnvFilter` first, so both accept and refuse the
        // same strings.
        let env = EnvFilter::builder().parse(directives)?;
        if !only_targets_and_levels(directives) {
            return Ok(Self {
                targets: None,
                env: Some(env),
            });
        }
        let targets = directives
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            targets: Some(if targets.is_empty() {
                Targets::new()
            } else {
                targets.parse()?
            }),
            env: None,
        })
    }

    /// Whether the cheap filter was chosen.
    #[cfg(test)]
    pub fn is_static(&self) -> bool {
        self.targets.is_some()
    }

    /// The filter as a layer: one of the two, the other `None`.
    pub fn into_layer<S>(self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        Layer::and_then(self.targets, self.env)
    }
}

/// A bare word in the directives that is neither a level nor one of
/// wstrace's targets: `RUST_LOG=verbose` parses (as "target `verbose` at
/// trace") and then lets no line of the server through, which looks like a
/// server that logs nothing. Refused at start instead.
pub fn unknown_bare_word(directives: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains(['=', '[', '{']))
        .find(|word| {
            !LEVELS.iter().any(|level| word.eq_ignore_ascii_case(level))
                && word.parse::<u8>().is_err()
                && !word.starts_with("wstrace")
        })
}

/// Plain `target=level` and bare levels or targets: no span (`[…]`) or
/// field (`{…}`) part, nothing quoted.
fn only_targets_and_levels(directives: &str) -> bool {
    !directives.contains(['[', ']', '{', '}', '"'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_words_must_be_levels_or_wstrace_targets() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,hyper=debug",
            "wstrace",
            "wstrace::session",
            "debug,[ws.session]=trace",
            "",
        ] {
            assert_eq!(unknown_bare_word(ok), None, "{ok}");
        }
        assert_eq!(unknown_bare_word("verbose"), Some("verbose"));
        assert_eq!(unknown_bare_word("info, loud ,hyper=warn"), Some("loud"));
    }
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::registry::Registry;

    /// Every event it is shown, as `target level`.
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let meta = event.metadata();
            let line = format!("{} {}", meta.target(), meta.level());
            self.0.lock().unwrap().push(line);
        }
    }

    fn emit_everything() {
        macro_rules! at_every_level {
            ($target:literal) => {
                tracing::trace!(target: $target, "x");
                tracing::debug!(target: $target, "x");
                tracing::info!(target: $target, "x");
                tracing::warn!(target: $target, "x");
                tracing::error!(target: $target, "x");
            };
        }
        at_every_level!("wstrace");
        at_every_level!("wstrace::session::reader");
        at_every_level!("wstrace_other");
        at_every_level!("h2");
        at_every_level!("h2::codec");
        at_every_level!("hyper");
        at_every_level!("opentelemetry_sdk");
        at_every_level!("tokio");
        let span = tracing::info_span!("ws.session");
        let _entered = span.enter();
        at_every_level!("wstrace::session");
    }

    fn seen_through(filter: impl Layer<Registry> + Send + Sync + 'static) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(Seen(seen.clone()));
        tracing::subscriber::with_default(subscriber, emit_everything);
        seen.lock().unwrap().clone()
    }

    #[test]
    fn plain_directives_filter_exactly_as_env_filter_does() {
        for directives in [
            crate::telemetry::DEFAULT_FILTER,
            "info",
            "debug",
            "off",
            "",
            "wstrace=debug",
            "warn,wstrace::session=trace",
            "info,h2=warn,",
            "wstrace,h2=error",
            "trace,wstrace::session::reader=off",
        ] {
            let global =
                GlobalFilter::parse(directives).unwrap_or_else(|e| panic!("{directives:?}: {e}"));
            assert!(global.is_static(), "{directives:?}");
            let cheap = seen_through(global.into_layer());
            let full = seen_through(EnvFilter::builder().parse(directives).unwrap());
            assert_eq!(cheap, full, "{directives:?}");
        }
    }

    #[test]
    fn span_and_field_directives_keep_the_env_filter() {
        for directives in ["info,[ws.session]=debug", "wstrace[{session_id}]=trace"] {
            let global = GlobalFilter::parse(directives).unwrap();
            assert!(!global.is_static(), "{directives:?}");
            let with_it = seen_through(global.into_layer());
            let full = seen_through(EnvFilter::builder().parse(directives).unwrap());
            assert_eq!(with_it, full, "{directives:?}");
        }
        // Inside the span, its directive lets debug lines through.
        let seen = seen_through(
            GlobalFilter::parse("info,[ws.session]=debug")
                .unwrap()
                .into_layer(),
        );
        assert!(
            seen.contains(&"wstrace::session DEBUG".to_owned()),
            "{seen:?}"
        );
    }

    #[test]
    fn a_bad_directive_is_refused_as_env_filter_refuses_it() {
        assert!(GlobalFilter::parse("wstrace=loud").is_err());
        assert!(EnvFilter::builder().parse("wstrace=loud").is_err());
    }
}
