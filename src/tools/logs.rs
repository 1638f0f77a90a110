//! `wstrace logs`: search and tail the local JSON log files.
//!
//! Reads every `*.log` file of the log directory (or the paths given), in
//! name order, which for the daily-rolling `wstrace.YYYY-MM-DD.log` files
//! is time order, and keeps the lines that match. A line that is not JSON is
//! reported as corrupt, never fatal. `--follow` keeps reading as lines are
//! appended, and picks up new files when the log rotates.

use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::events::FlightRecorded;
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
            let recording = value[FlightRecorded::FIELD].as_array();
            if let Some(map) = value.as_object() {
                for (key, v) in map
                    .iter()
                    .filter(|(k, _)| !shown(k))
                    .filter(|(k, _)| !(recording.is_some() && *k == FlightRecorded::FIELD))
                {
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
            let mut text = format!(
                "{} {} {} {instance}{}{}",
                paint("2", &terminal_safe(time)),
                paint(code, name),
                paint("34", &terminal_safe(&session)),
                terminal_safe(value["msg"].as_str().unwrap_or("")),
                fields
            );
            for entry in recording.into_iter().flatten() {
                text.push('\n');
                text.push_str(&flight_entry(entry));
            }
            text
        }
    }
}

/// One message of a flight recording, on its own indented line:
/// `  #69  +1234.567 ms  → in   echo        27 B  id …  span …`.
fn flight_entry(entry: &Value) -> String {
    let text = |key: &str| terminal_safe(entry[key].as_str().unwrap_or("?")).into_owned();
    let arrow = match entry["dir"].as_str() {
        Some("in") => "→ in ",
        Some("out") => "← out",
        _ => "  ?  ",
    };
    let mut line = format!(
        "    #{:<5} +{:>11.3} ms  {arrow}  {:<12} {:>8} B",
        entry["seq"].as_u64().unwrap_or(0),
        entry["at_ms"].as_f64().unwrap_or(0.0),
        text("type"),
        entry["size"].as_u64().unwrap_or(0),
    );
    if entry["message_id"].is_string() {
        line.push_str(&format!("  message {}", text("message_id")));
    }
    if entry["span_id"].is_string() {
        line.push_str(&format!("  span {}", text("span_id")));
    }
    line
}

/// The lines of one trace, one session after another (in order of first
/// line), each under a header. A client may continue any trace it likes
/// (W3C `traceparent`), so several sessions can share a trace id and one
/// client's lines could be mistaken for another's: a session that
/// continued the caller's trace is marked as such.
pub fn trace_view(lines: &[Value], color: bool) -> Vec<String> {
    let mut order: Vec<Option<&str>> = Vec::new();
    let mut groups: HashMap<Option<&str>, Vec<&Value>> = HashMap::new();
    for line in lines {
        let session = line["session_id"].as_str();
        if !groups.contains_key(&session) {
            order.push(session);
        }
        groups.entry(session).or_default().push(line);
    }
    let mut out = Vec::new();
    for session in order {
        let lines = &groups[&session];
        let origin = lines
            .iter()
            .find(|l| l["msg"] == crate::events::SessionOpened::MESSAGE)
            .and_then(|l| l["trace.origin"].as_str());
        let header = match (session, origin) {
            (None, _) => "server lines (no session)".to_string(),
            (Some(id), Some("new")) => {
                format!("session {} · started this trace", terminal_safe(id))
            }
            (Some(id), Some(from)) => format!(
                "session {} · continued the caller's trace (traceparent from {}): \
                 not necessarily the same client as the other sessions of this trace",
                terminal_safe(id),
                terminal_safe(from)
            ),
            (Some(id), None) => format!("session {}", terminal_safe(id)),
        };
        let header = format!("── {header} ──");
        out.push(if color {
            format!("\x1b[1m{header}\x1b[0m")
        } else {
            header
        });
        for line in lines {
            out.push(human(
                &LogLine::Event {
                    raw: String::new(),
                    value: (*line).clone(),
                },
                color,
            ));
        }
    }
    out
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
    if args.trace_id.is_some() && !args.json && !args.follow {
        // A trace: its sessions one after another, each marked.
        let (mut events, mut corrupt) = (Vec::new(), Vec::new());
        Tail::default().read_new(&log_files(&paths)?, |line| match line {
            LogLine::Event { value, .. } if filter.matches(&value) => events.push(value),
            LogLine::Event { .. } => {}
            other => corrupt.push(human(&other, color)),
        })?;
        let mut out = stdout.lock();
        for line in trace_view(&events, color).into_iter().chain(corrupt) {
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
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
    fn a_trace_view_shows_each_session_apart_and_marks_continued_traces() {
        use serde_json::json;
        let line = |session: Option<&str>, msg: &str, origin: Option<&str>| {
            let mut v = json!({"msg": msg, "level": 30, "time": "2026-11-23T14:43:39.458625Z",
                               "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"});
            if let Some(s) = session {
                v["session_id"] = json!(s);
            }
            if let Some(o) = origin {
                v["trace.origin"] = json!(o);
            }
            v
        };
        let victim = "01a208dc-d33f-715b-ba73-6c598ce9d41c";
        let intruder = "01a208dc-d33f-715b-ba73-000000000000";
        let lines = [
            line(None, "request refused", None),
            line(Some(victim), "session opened", Some("new")),
            line(Some(intruder), "session opened", Some("header")),
            line(Some(intruder), "session closed", None),
            line(Some(victim), "session closed", None),
        ];
        let view = trace_view(&lines, false);
        let headers: Vec<&String> = view.iter().filter(|l| l.starts_with("── ")).collect();
        assert_eq!(headers.len(), 3, "{view:#?}");
        assert!(headers[1].contains(victim) && headers[1].contains("started this trace"));
        assert!(
            headers[2].contains(intruder) && headers[2].contains("continued the caller's trace")
        );
        // Each session's lines follow its own header.
        let at = |needle: &str| view.iter().position(|l| l.contains(needle)).unwrap();
        assert!(at(intruder) > at(victim));
        assert_eq!(view.len(), 3 + lines.len());
    }

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
    fn a_flight_recording_reads_as_a_list_of_messages() {
        let line = LogLine::Event {
            raw: String::new(),
            value: json!({"msg": "flight recorder", "level": 40, "time": "2026-11-23T14:43:39.458625Z",
                          "session_id": "01a208dc-d33f-715b-ba73-6c598ce9d41c",
                          "trigger": "close 1009", "flight.messages": 2, "flight.skipped": 0,
                          "flight_recorder": [
                              {"seq": 1, "dir": "in", "type": "publish", "size": 40, "at_ms": 3.25,
                               "message_id": "01a208dc-0000-7000-8000-000000000001"},
                              {"seq": 2, "dir": "out", "type": "error", "size": 61, "at_ms": 3.5,
                               "span_id": "00f067aa0ba902b7"}]}),
        };
        let text = human(&line, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("flight recorder "), "{text}");
        assert!(lines[0].contains(" trigger=close 1009"), "{text}");
        assert!(!lines[0].contains("flight_recorder"), "{text}");
        assert_eq!(
            lines[1],
            "    #1     +      3.250 ms  → in   publish            40 B  message 01a208dc-0000-7000-8000-000000000001"
        );
        assert_eq!(
            lines[2],
            "    #2     +      3.500 ms  ← out  error              61 B  span 00f067aa0ba902b7"
        );
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
