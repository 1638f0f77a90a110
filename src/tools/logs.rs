//! `wstrace logs`: search and tail the local JSON log files.
//!
//! Reads every `*.log` file of the log directory (or the paths given), in
//! name order, which for the daily-rolling `wstrace.YYYY-MM-DD.log` files
//! is time order, and keeps the lines that match. A line that is not JSON is
//! reported as corrupt, never fatal. `--follow` keeps reading as lines are
//! appended, and picks up new files when the log rotates.

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::telemetry::bunyan_level;
pub use crate::telemetry::logfile::{Filter, LogLine, Tail, log_files, search};

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// Only lines of this trace.
    #[arg(long = "trace", env = "WSTRACE_LOGS_TRACE")]
    pub trace_id: Option<String>,
    /// Only lines of this session.
    #[arg(long = "session", env = "WSTRACE_LOGS_SESSION")]
    pub session_id: Option<String>,
    /// Only lines at this level or above (trace, debug, info, warn, error).
    #[arg(long, env = "WSTRACE_LOGS_LEVEL")]
    pub level: Option<LevelName>,
    /// Only lines newer than this (e.g. 15m, 2h).
    #[arg(long, env = "WSTRACE_LOGS_SINCE", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Keep reading as lines are written (and files rotate).
    #[arg(long, short = 'f', env = "WSTRACE_LOGS_FOLLOW")]
    pub follow: bool,
    /// Print the matching raw JSON lines, for jq.
    #[arg(long, env = "WSTRACE_LOGS_JSON")]
    pub json: bool,
    /// Colour: auto (when stdout is a terminal), always or never.
    #[arg(long, env = "WSTRACE_LOGS_COLOR", default_value = "auto")]
    pub color: ColorChoice,
    /// Log directory used when no PATH is given.
    #[arg(long, env = "WSTRACE_LOG_DIR", default_value = "logs")]
    pub log_dir: PathBuf,
    /// Files or directories to read (default: --log-dir).
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LevelName {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LevelName {
    fn bunyan(self) -> u64 {
        let level = match self {
            LevelName::Trace => tracing::Level::TRACE,
            LevelName::Debug => tracing::Level::DEBUG,
            LevelName::Info => tracing::Level::INFO,
            LevelName::Warn => tracing::Level::WARN,
            LevelName::Error => tracing::Level::ERROR,
        };
        u64::from(bunyan_level(&level))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// What `args` asks of a line.
pub fn filter_from_args(args: &LogsArgs) -> Filter {
    Filter {
        trace_id: args.trace_id.clone(),
        session_id: args.session_id.clone(),
        min_level: args.level.map(LevelName::bunyan),
        since: args.since.map(|d| SystemTime::now() - d),
    }
}

/// Fields a human line shows in its fixed columns (or leaves out as
/// bookkeeping), not again as `k=v`: the bunyan record's own, and the
/// session.
fn shown(key: &str) -> bool {
    key == "session_id" || crate::telemetry::BUNYAN_FIELDS.contains(&key)
}

/// Text from a log line made safe for a terminal. Log lines carry what
/// clients chose (close reasons, JWT subjects, user agents): every control
/// character (ESC, BEL, CR, LF, …) and bidirectional override is shown
/// escaped, so a value can neither drive the terminal (retitle it, clear
/// it) nor start a forged line.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// One readable line: time, level, short session, message, fields. Every
/// piece of the line passes through [`terminal_safe`].
pub fn human(line: &LogLine, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    match line {
        LogLine::Corrupt { file, line, raw } => {
            let preview: String = raw.chars().take(200).collect();
            let file = file.display().to_string();
            paint(
                "35",
                &format!(
                    "CORRUPT {}:{line}: {}",
                    terminal_safe(&file),
                    terminal_safe(&preview)
                ),
            )
        }
        LogLine::Event { value, .. } => {
            let time = value["time"].as_str().unwrap_or("");
            let time = time.get(11..23).unwrap_or(time);
            let level = value["level"].as_u64().unwrap_or(0);
            let (name, code) = match level {
                0..=10 => ("TRACE", "90"),
                11..=20 => ("DEBUG", "36"),
                21..=30 => ("INFO ", "32"),
                31..=40 => ("WARN ", "33"),
                _ => ("ERROR", "31"),
            };
            let session = value["session_id"]
                .as_str()
                .map(|s| s.get(s.len().saturating_sub(8)..).unwrap_or(s).to_owned())
                .unwrap_or_else(|| "-".repeat(8));
            let mut fields = String::new();
            if let Some(map) = value.as_object() {
                for (key, v) in map.iter().filter(|(k, _)| !shown(k)) {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    fields.push_str(&format!(
                        " {}={}",
                        paint("2", &terminal_safe(key)),
                        terminal_safe(&v)
                    ));
                }
            }
            // Lines from several instances read together say whose they are.
            let instance = value["instance_id"]
                .as_str()
                .map(|i| format!("{} ", paint("35", &format!("@{}", terminal_safe(i)))))
                .unwrap_or_default();
            format!(
                "{} {} {} {instance}{}{}",
                paint("2", &terminal_safe(time)),
                paint(code, name),
                paint("34", &terminal_safe(&session)),
                terminal_safe(value["msg"].as_str().unwrap_or("")),
                fields
            )
        }
    }
}

/// `wstrace logs`.
pub fn run(args: LogsArgs) -> std::io::Result<()> {
    use std::io::IsTerminal;
    let paths = if args.paths.is_empty() {
        vec![args.log_dir.clone()]
    } else {
        args.paths.clone()
    };
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal(),
    };
    let filter = filter_from_args(&args);
    let stdout = std::io::stdout();
    let mut tail = Tail::default();
    let mut print = |line: LogLine| {
        let mut out = stdout.lock();
        let _ = match (&line, args.json) {
            (LogLine::Event { value, .. }, _) if !filter.matches(value) => Ok(()),
            (LogLine::Event { raw, .. }, true) => writeln!(out, "{raw}"),
            (LogLine::Corrupt { .. }, true) => {
                eprintln!("{}", human(&line, false));
                Ok(())
            }
            (_, false) => writeln!(out, "{}", human(&line, color)),
        };
    };
    loop {
        tail.read_new(&log_files(&paths)?, &mut print)?;
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_output_never_passes_control_characters_to_the_terminal() {
        let hostile = "bye\x1b]0;pwned\x07\x1b[2J\r\n14:00:00.000 INFO  forged line\u{202e}";
        let line = LogLine::Event {
            raw: String::new(),
            value: serde_json::json!({
                "msg": "session closed", "level": 30, "time": "2026-11-23T14:43:39.458625Z",
                "session_id": "01a208dc-d33f-715b-ba73-6c598ce9d41c",
                "close_reason": hostile, "user.id": hostile, hostile: 1,
                "instance_id": hostile,
            }),
        };
        let corrupt = LogLine::Corrupt {
            file: PathBuf::from("wstrace.log"),
            line: 3,
            raw: hostile.to_string(),
        };
        for color in [false, true] {
            for text in [human(&line, color), human(&corrupt, color)] {
                // Colour codes are ours (ESC [ … m); nothing else may pass.
                let without_ours = text
                    .replace("\x1b[0m", "")
                    .split("\x1b[")
                    .enumerate()
                    .map(|(i, part)| {
                        if i == 0 {
                            part.to_string()
                        } else {
                            part.split_once('m')
                                .map_or(String::new(), |(_, rest)| rest.to_string())
                        }
                    })
                    .collect::<String>();
                assert!(
                    !without_ours
                        .chars()
                        .any(|c| c.is_control() || c == '\u{202e}'),
                    "{text:?}"
                );
                assert!(text.contains("\\u{1b}]0;pwned"), "{text:?}");
            }
        }
    }
    use serde_json::json;
    use std::path::Path;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn filters_by_trace_session_and_level() {
        let line = json!({"trace_id": "t1", "session_id": "s1", "level": 40, "time": "2026-11-23T10:00:00.000000Z"});
        let f = |trace: Option<&str>, level: Option<u64>| Filter {
            trace_id: trace.map(str::to_owned),
            min_level: level,
            ..Filter::default()
        };
        assert!(f(Some("t1"), None).matches(&line));
        assert!(!f(Some("t2"), None).matches(&line));
        assert!(f(None, Some(40)).matches(&line));
        assert!(!f(None, Some(50)).matches(&line));
        assert_eq!(LevelName::Warn.bunyan(), 40);
    }

    #[test]
    fn tail_reads_complete_lines_once_and_survives_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "a.log", "{\"msg\":\"one\"}\n{\"msg\":\"tw");
        let mut tail = Tail::default();
        let mut seen = Vec::new();
        tail.read_new(std::slice::from_ref(&file), |l| seen.push(l))
            .unwrap();
        assert_eq!(seen.len(), 1);
        std::fs::write(&file, "{\"msg\":\"one\"}\n{\"msg\":\"two\"}\nnot json\n").unwrap();
        tail.read_new(std::slice::from_ref(&file), |l| seen.push(l))
            .unwrap();
        assert_eq!(seen.len(), 3);
        assert!(matches!(&seen[2], LogLine::Corrupt { line: 3, .. }));
        std::fs::write(&file, "{\"msg\":\"new\"}\n").unwrap();
        tail.read_new(std::slice::from_ref(&file), |l| seen.push(l))
            .unwrap();
        assert_eq!(seen.len(), 4, "a truncated file is read from the start");
    }

    #[test]
    fn human_lines_are_readable_and_coloured_on_request() {
        let line = LogLine::Event {
            raw: String::new(),
            value: json!({"msg": "session closed", "level": 30, "time": "2026-11-23T14:43:39.458625Z",
                          "session_id": "01a208dc-d33f-715b-ba73-6c598ce9d41c", "close_code": 1000}),
        };
        assert_eq!(
            human(&line, false),
            "14:43:39.458 INFO  598ce9d41c session closed close_code=1000"
                .replace("598ce9d41c", "8ce9d41c")
        );
        assert!(human(&line, true).contains("\x1b[32mINFO \x1b[0m"));
        let LogLine::Event { mut value, raw } = line else {
            unreachable!()
        };
        value["instance_id"] = json!("wstrace-2");
        assert_eq!(
            human(&LogLine::Event { value, raw }, false),
            "14:43:39.458 INFO  8ce9d41c @wstrace-2 session closed close_code=1000"
        );
    }
}
