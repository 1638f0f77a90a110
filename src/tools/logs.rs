//! `wstrace logs`: search and tail the local JSON log files.
//!
//! Reads every `*.log` file of the log directory (or the paths given: one
//! directory per instance, say), keeps the lines that match, and prints
//! them merged in time order. A line that is not JSON is
//! reported as corrupt, never fatal. `--follow` keeps reading as lines are
//! appended, and picks up new files when the log rotates.

use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::events::FlightRecorded;
use crate::telemetry::bunyan_level;
use crate::telemetry::logfile::MIN_SHORT_ID;
pub use crate::telemetry::logfile::{Filter, LogLine, Tail, log_files, search};

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// Only lines of this trace: its id, or the short id the output shows
    /// (any 8 or more characters from its start or end).
    #[arg(long = "trace", env = "WSTRACE_LOGS_TRACE")]
    pub trace_id: Option<String>,
    /// Only lines of this session: its id, or a short id as above.
    #[arg(long = "session", env = "WSTRACE_LOGS_SESSION")]
    pub session_id: Option<String>,
    /// Only lines at this level or above (trace, debug, info, warn, error).
    #[arg(long, env = "WSTRACE_LOGS_LEVEL")]
    pub level: Option<LevelName>,
    /// Only lines from this time on: a duration back from now (15m, 2h) or
    /// an RFC 3339 time (2026-11-23T14:00:00Z).
    #[arg(long, env = "WSTRACE_LOGS_SINCE", value_parser = since)]
    pub since: Option<SystemTime>,
    /// Keep reading as lines are written (and files rotate).
    #[arg(long, short = 'f', env = "WSTRACE_LOGS_FOLLOW")]
    pub follow: bool,
    /// Print the matching raw JSON lines, for jq.
    #[arg(long, env = "WSTRACE_LOGS_JSON")]
    pub json: bool,
    /// Colour: auto (when stdout is a terminal), always or never.
    #[arg(long, env = "WSTRACE_LOGS_COLOR", default_value = "auto")]
    pub color: ColorChoice,
    /// Log directory used when no PATH is given (default: ./logs, or
    /// standard input when it is a pipe or a file).
    #[arg(long, env = "WSTRACE_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Files or directories to read (default: --log-dir); `-` reads
    /// standard input.
    pub paths: Vec<PathBuf>,
}

/// Where `wstrace logs` reads when neither PATH nor --log-dir is given.
pub const DEFAULT_LOG_DIR: &str = "logs";

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

/// `--since`: how long ago, or when.
fn since(value: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(value) {
        return Ok(SystemTime::now() - ago);
    }
    humantime::parse_rfc3339_weak(value.trim_end_matches('Z'))
        .map_err(|_| format!("{value:?} is neither a duration (15m, 2h) nor an RFC 3339 time"))
}

/// What `args` asks of a line.
pub fn filter_from_args(args: &LogsArgs) -> Filter {
    Filter {
        trace_id: args.trace_id.clone(),
        session_id: args.session_id.clone(),
        min_level: args.level.map(LevelName::bunyan),
        since: args.since,
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

/// Fields shown first, in this order, when a line has them: what a reader
/// of a `session closed` or an error line looks for.
const FIELDS_FIRST: &[&str] = &[
    "close_code",
    "close_reason",
    "closed_by",
    "peer_close_code",
    "error.code",
    "error.message",
    "code",
    "trigger",
    "channel",
    "debug_reason",
    "requested_by",
    "ws.message.type",
    "duration_ms",
    "duration_us",
];

/// A session's fields that are the same on each of its lines (they come
/// from its span): shown on `session opened`, left out after it.
const SESSION_CONSTANTS: &[&str] = &["net.peer.ip", "net.peer.port", "user.id"];

/// A value as a human reads it: bare when it is one plain word, quoted
/// (JSON-escaped) when it is empty or has spaces, quotes or `=` in it.
fn field_value(value: &Value) -> String {
    match value {
        Value::String(s)
            if s.is_empty()
                || s.chars()
                    .any(|c| c.is_whitespace() || matches!(c, '"' | '=' | '\\')) =>
        {
            serde_json::to_string(s).unwrap_or_default()
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Turns lines into readable text. Remembers which sessions' `session
/// opened` it has shown, so that their constant fields are not repeated on
/// every later line.
#[derive(Debug, Default)]
pub struct Human {
    color: bool,
    opened: std::collections::HashSet<String>,
}

impl Human {
    pub fn new(color: bool) -> Self {
        Self {
            color,
            opened: Default::default(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// One readable line: date and time (UTC), level, short session id (its
    /// last 8 characters), short trace id (its first 8), message, fields.
    /// Every piece of it passes through [`terminal_safe`].
    pub fn line(&mut self, line: &LogLine) -> String {
        let value = match line {
            LogLine::Corrupt { file, line, raw } => {
                let preview: String = raw.chars().take(200).collect();
                let file = file.display().to_string();
                return self.paint(
                    "35",
                    &format!(
                        "CORRUPT {}:{line}: {}",
                        terminal_safe(&file),
                        terminal_safe(&preview)
                    ),
                );
            }
            LogLine::Event { value, .. } => value,
        };
        // `2026-11-23T14:43:39.458625Z` → `2026-11-23T14:43:39.458Z`.
        let time = value["time"].as_str().unwrap_or("");
        let time = match (time.get(..23), time.ends_with('Z')) {
            (Some(ms), true) => format!("{ms}Z"),
            _ => time.to_owned(),
        };
        let level = value["level"].as_u64().unwrap_or(0);
        let (name, code) = match level {
            0..=10 => ("TRACE", "90"),
            11..=20 => ("DEBUG", "36"),
            21..=30 => ("INFO ", "32"),
            31..=40 => ("WARN ", "33"),
            _ => ("ERROR", "31"),
        };
        let session_id = value["session_id"].as_str();
        let session = session_id
            .map(|s| s.get(s.len().saturating_sub(8)..).unwrap_or(s).to_owned())
            .unwrap_or_else(|| "-".repeat(8));
        let trace = value["trace_id"]
            .as_str()
            .map(|t| t.get(..8).unwrap_or(t).to_owned())
            .unwrap_or_else(|| "-".repeat(8));
        let msg = value["msg"].as_str().unwrap_or("");
        // After its `session opened`, a session's constant fields are known.
        let skip_constants = match session_id {
            Some(id) if msg == crate::events::SessionOpened::MESSAGE => {
                self.opened.insert(id.to_owned());
                false
            }
            Some(id) => self.opened.contains(id),
            None => false,
        };
        let recording = value[FlightRecorded::FIELD].as_array();
        let mut keys: Vec<&String> = value
            .as_object()
            .map(|map| map.keys().collect())
            .unwrap_or_default();
        keys.retain(|k| !shown(k));
        keys.retain(|k| !(recording.is_some() && *k == FlightRecorded::FIELD));
        keys.retain(|k| !(skip_constants && SESSION_CONSTANTS.contains(&k.as_str())));
        keys.sort_by_key(|k| {
            FIELDS_FIRST
                .iter()
                .position(|f| f == k)
                .unwrap_or(FIELDS_FIRST.len())
        });
        let mut fields = String::new();
        for key in keys {
            fields.push_str(&format!(
                " {}={}",
                self.paint("2", &terminal_safe(key)),
                terminal_safe(&field_value(&value[key.as_str()]))
            ));
        }
        // Lines from several instances read together say whose they are.
        let instance = value["instance_id"]
            .as_str()
            .map(|i| format!("{} ", self.paint("35", &format!("@{}", terminal_safe(i)))))
            .unwrap_or_default();
        let mut text = format!(
            "{} {} {} {} {instance}{}{}",
            self.paint("2", &terminal_safe(&time)),
            self.paint(code, name),
            self.paint("34", &terminal_safe(&session)),
            self.paint("2", &terminal_safe(&trace)),
            terminal_safe(msg),
            fields
        );
        for entry in recording.into_iter().flatten() {
            text.push('\n');
            text.push_str(&flight_entry(entry));
        }
        text
    }
}

/// One line on its own, without the memory of [`Human`].
pub fn human(line: &LogLine, color: bool) -> String {
    Human::new(color).line(line)
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
        let mut human = Human::new(color);
        for line in lines {
            out.push(human.line(&LogLine::Event {
                raw: String::new(),
                value: (*line).clone(),
            }));
        }
    }
    out
}

/// Why `wstrace logs` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error(
        "no log files in {0}: start the server here (it writes ./logs), or give the log directory (--log-dir DIR or a PATH)"
    )]
    NoFiles(String),
    #[error("{what} {short:?} matches {count} {what}s ({examples}…): give more characters")]
    Ambiguous {
        what: &'static str,
        short: String,
        count: usize,
        examples: String,
    },
    #[error(
        "{what} id {short:?} is shorter than {MIN_SHORT_ID} characters: give the whole id or at least {MIN_SHORT_ID} characters of it"
    )]
    ShortId { what: &'static str, short: String },
    #[error("no line {wanted} in {searched}")]
    NoMatch { wanted: String, searched: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where the lines come from.
enum Source {
    Files(Vec<PathBuf>),
    Stdin,
}

impl Source {
    /// PATHs as given (`-`: standard input); else --log-dir; else
    /// standard input when it is a pipe or a file (as `bunyan` reads it);
    /// else ./logs.
    fn from_args(args: &LogsArgs) -> Self {
        if args.paths.iter().any(|p| p.as_os_str() == "-") {
            return Self::Stdin;
        }
        if !args.paths.is_empty() {
            return Self::Files(args.paths.clone());
        }
        match &args.log_dir {
            Some(dir) => Self::Files(vec![dir.clone()]),
            None if stdin_is_piped() => Self::Stdin,
            None => Self::Files(vec![PathBuf::from(DEFAULT_LOG_DIR)]),
        }
    }
}

/// Standard input is a pipe or a regular file (not a terminal, nor
/// /dev/null as a service manager leaves it).
fn stdin_is_piped() -> bool {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::metadata("/dev/stdin") else {
        return false;
    };
    meta.file_type().is_fifo() || meta.file_type().is_file()
}

/// Every line of standard input, as a file's lines are read.
fn read_stdin(mut each: impl FnMut(LogLine)) -> std::io::Result<()> {
    use std::io::BufRead;
    let stdin = std::path::Path::new("(stdin)");
    for (number, raw) in std::io::stdin().lock().lines().enumerate() {
        let raw = raw?;
        if !raw.is_empty() {
            each(LogLine::parse(raw, stdin, number + 1));
        }
    }
    Ok(())
}

/// A short id must have [`MIN_SHORT_ID`] characters: fewer would match
/// nothing (`id_matches`), silently.
fn check_short_ids(args: &LogsArgs) -> Result<(), LogsError> {
    for (what, id) in [("trace", &args.trace_id), ("session", &args.session_id)] {
        if let Some(id) = id
            && id.len() < MIN_SHORT_ID
        {
            return Err(LogsError::ShortId {
                what,
                short: id.clone(),
            });
        }
    }
    Ok(())
}

/// What the filter asked, for "no line …".
fn wanted(args: &LogsArgs) -> String {
    let mut parts = Vec::new();
    if let Some(id) = &args.trace_id {
        parts.push(format!("of trace {id}"));
    }
    if let Some(id) = &args.session_id {
        parts.push(format!("of session {id}"));
    }
    if let Some(level) = args.level {
        parts.push(format!("at {level:?} or above").to_lowercase());
    }
    if args.since.is_some() {
        parts.push("in the time asked".into());
    }
    match parts.is_empty() {
        true => "at all".into(),
        false => parts.join(", "),
    }
}

/// A short id (as the human output and the explorer print them) must name
/// one session or trace: the full ids it matched, if more than one.
pub(crate) fn ambiguous<'a>(
    lines: impl Iterator<Item = &'a Value>,
    field: &str,
    wanted: Option<&str>,
) -> Result<(), LogsError> {
    let Some(short) = wanted else { return Ok(()) };
    let mut ids: Vec<&str> = lines.filter_map(|l| l[field].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() <= 1 {
        return Ok(());
    }
    Err(LogsError::Ambiguous {
        what: if field == "trace_id" {
            "trace"
        } else {
            "session"
        },
        short: short.to_owned(),
        count: ids.len(),
        examples: ids[..2].join(", "),
    })
}

/// `wstrace logs`: like grep, exit 1 with a reason when nothing matched;
/// a reader that went away (`| head`) ends it quietly.
pub fn run(args: LogsArgs) -> Result<(), LogsError> {
    match print_lines(&args) {
        Err(LogsError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn print_lines(args: &LogsArgs) -> Result<(), LogsError> {
    use std::io::IsTerminal;
    check_short_ids(args)?;
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal(),
    };
    let source = Source::from_args(args);
    let filter = filter_from_args(args);
    if args.follow {
        return follow(&source, &filter, args.json, color);
    }
    // Everything that matches, from every file (one directory per
    // instance, say), merged in time order.
    let (mut events, mut corrupt) = (Vec::new(), Vec::new());
    let mut keep = |line| match line {
        LogLine::Event { value, raw } if filter.matches(&value) => events.push((value, raw)),
        LogLine::Event { .. } => {}
        other => corrupt.push(other),
    };
    let searched = match &source {
        Source::Stdin => {
            read_stdin(&mut keep)?;
            "standard input".to_owned()
        }
        Source::Files(paths) => {
            let files = files_of(paths)?;
            Tail::default().read_new(&files, &mut keep)?;
            let named: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            format!("{} ({} file(s))", named.join(", "), files.len())
        }
    };
    // Stable: lines of one instance with the same timestamp keep their
    // order.
    events.sort_by(|a, b| a.0["time"].as_str().cmp(&b.0["time"].as_str()));
    let values = || events.iter().map(|(value, _)| value);
    ambiguous(values(), "session_id", filter.session_id.as_deref())?;
    ambiguous(values(), "trace_id", filter.trace_id.as_deref())?;
    let matched = !events.is_empty();
    let mut out = std::io::stdout().lock();
    if args.json {
        for (_, raw) in &events {
            writeln!(out, "{raw}")?;
        }
        for line in &corrupt {
            eprintln!("{}", human(line, false));
        }
    } else {
        let text: Vec<String> = if args.trace_id.is_some() {
            // A trace: its sessions one after another, each marked.
            let values: Vec<Value> = events.into_iter().map(|(value, _)| value).collect();
            trace_view(&values, color)
        } else {
            let mut human = Human::new(color);
            events
                .into_iter()
                .map(|(value, raw)| human.line(&LogLine::Event { value, raw }))
                .collect()
        };
        for line in text
            .into_iter()
            .chain(corrupt.iter().map(|c| human(c, color)))
        {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    match matched {
        true => Ok(()),
        false => Err(LogsError::NoMatch {
            wanted: wanted(args),
            searched,
        }),
    }
}

/// The log files under `paths`; none is an error naming where it looked.
fn files_of(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LogsError> {
    let files = log_files(paths).unwrap_or_default();
    if files.is_empty() {
        let named: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(LogsError::NoFiles(named.join(", ")));
    }
    Ok(files)
}

/// `--follow`: matching lines as they are written (files, rotation
/// included) or as they arrive on standard input, until the reader goes.
fn follow(source: &Source, filter: &Filter, json: bool, color: bool) -> Result<(), LogsError> {
    let mut printer = Human::new(color);
    // The first write that failed (the reader went away): nothing more is
    // written, and the loop ends with it.
    let failed = std::cell::Cell::new(None::<std::io::Error>);
    let mut gone = false;
    let mut print = |line: LogLine| {
        if gone {
            return;
        }
        let mut out = std::io::stdout().lock();
        let written = match (&line, json) {
            (LogLine::Event { value, .. }, _) if !filter.matches(value) => Ok(()),
            (LogLine::Event { raw, .. }, true) => writeln!(out, "{raw}"),
            (LogLine::Corrupt { .. }, true) => {
                eprintln!("{}", human(&line, false));
                Ok(())
            }
            (_, false) => writeln!(out, "{}", printer.line(&line)),
        };
        if let Err(error) = written.and_then(|()| out.flush()) {
            gone = true;
            failed.set(Some(error));
        }
    };
    let paths = match source {
        Source::Stdin => {
            read_stdin(&mut print)?;
            return failed.take().map_or(Ok(()), |e| Err(e.into()));
        }
        Source::Files(paths) => paths,
    };
    files_of(paths)?;
    let mut tail = Tail::default();
    loop {
        tail.read_new(&log_files(paths)?, &mut print)?;
        if let Some(error) = failed.take() {
            return Err(error.into());
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
        assert!(
            lines[0].contains(r#"flight recorder trigger="close 1009" flight.messages=2"#),
            "the trigger first, quoted: {text}"
        );
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
            "2026-11-23T14:43:39.458Z INFO  8ce9d41c -------- session closed close_code=1000"
        );
        assert!(human(&line, true).contains("\x1b[32mINFO \x1b[0m"));
        let LogLine::Event { mut value, raw } = line else {
            unreachable!()
        };
        value["instance_id"] = json!("wstrace-2");
        value["trace_id"] = json!("4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            human(&LogLine::Event { value, raw }, false),
            "2026-11-23T14:43:39.458Z INFO  8ce9d41c 4bf92f35 @wstrace-2 session closed close_code=1000"
        );
    }

    #[test]
    fn fields_that_matter_come_first_values_are_quoted_and_constants_shown_once() {
        let session = "01a208dc-d33f-715b-ba73-6c598ce9d41c";
        let event = |value: Value| LogLine::Event {
            raw: String::new(),
            value,
        };
        let mut printer = Human::new(false);
        let opened = printer.line(&event(json!({
            "msg": "session opened", "level": 30, "time": "2026-11-23T14:43:39.000000Z",
            "session_id": session, "net.peer.ip": "127.0.0.1", "net.peer.port": 5000,
            "user_agent.original": "",
        })));
        assert!(opened.contains("net.peer.ip=127.0.0.1"), "{opened}");
        assert!(
            opened.contains(r#"user_agent.original="""#),
            "empty is quoted: {opened}"
        );
        let closed = printer.line(&event(json!({
            "msg": "session closed", "level": 30, "time": "2026-11-23T14:43:40.000000Z",
            "session_id": session, "net.peer.ip": "127.0.0.1", "net.peer.port": 5000,
            "bytes_in": 10, "closed_by": "client", "close_code": 1000,
            "close_reason": "see you later",
        })));
        assert!(
            closed.ends_with(
                r#"session closed close_code=1000 close_reason="see you later" closed_by=client bytes_in=10"#
            ),
            "{closed}"
        );
        // Another session's lines still show their own.
        let other = printer.line(&event(json!({
            "msg": "session closed", "level": 30, "time": "2026-11-23T14:43:40.000000Z",
            "session_id": "01a208dc-d33f-715b-ba73-000000000000", "net.peer.ip": "10.0.0.9",
        })));
        assert!(other.contains("net.peer.ip=10.0.0.9"), "{other}");
    }

    #[test]
    fn short_ids_find_lines_by_their_start_or_end() {
        use crate::telemetry::logfile::id_matches;
        let id = "01a208dc-d33f-715b-ba73-6c598ce9d41c";
        assert!(id_matches(id, id));
        assert!(id_matches(id, "8ce9d41c"), "the end, as printed");
        assert!(id_matches(id, "01a208dc-d33f"), "the start");
        assert!(!id_matches(id, "d41c"), "too short to trust");
        assert!(!id_matches(id, "d33f-715b"), "the middle is not a short id");
        let lines = [
            json!({"session_id": id}),
            json!({"session_id": "01a208dc-0000-7000-8000-000000000000"}),
        ];
        let err = ambiguous(lines.iter(), "session_id", Some("01a208dc")).unwrap_err();
        assert!(err.to_string().contains("give more characters"), "{err}");
        assert!(ambiguous(lines[..1].iter(), "session_id", Some("8ce9d41c")).is_ok());
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let ago = since("15m").unwrap();
        assert!(SystemTime::now().duration_since(ago).unwrap() >= Duration::from_secs(899));
        let at = since("2026-11-23T14:00:00Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(at).to_string(),
            "2026-11-23T14:00:00Z"
        );
        assert!(since("yesterday-ish").is_err());
    }
}
