//! `wstrace doctor --trace ID`: proof for a session that already happened.
//!
//! The files are the record: the trace's lines are counted per session in
//! `--log-dir`, then the same in Loki over the trace's time window (by
//! trace id), and its spans in Tempo (by name). The proof holds only if
//! Loki has every line the files have, for every session, and Tempo has
//! the trace with a `GET /ws` and a `ws.session` span per session.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::{DoctorArgs, DoctorError, SESSION_SPANS, Trust, loki_lines, tempo_span_names, unix_ns};
use crate::telemetry::logfile::{Filter, LogLine, Tail, line_time, log_files};

/// Around the files' first and last line: Vector stamps a line with the
/// time the server wrote it, but clocks of hosts differ a little.
const WINDOW_MARGIN: Duration = Duration::from_secs(300);

/// Lines of one session (`None`: lines of the trace outside a session,
/// such as a refused upgrade's).
type PerSession = BTreeMap<Option<String>, usize>;

/// The trace as the files hold it.
struct FileRecord {
    trace_id: String,
    lines: PerSession,
    first: SystemTime,
    last: SystemTime,
}

pub(super) async fn prove(args: &DoctorArgs, id: &str, trust: &Trust) -> Result<(), DoctorError> {
    let record = read_files(&args.log_dir, id)?;
    let sessions = record.lines.keys().filter(|s| s.is_some()).count();
    println!(
        "trace {} in {}: {} line(s), {sessions} session(s)",
        record.trace_id,
        args.log_dir.display(),
        record.lines.values().sum::<usize>(),
    );
    let window = (
        unix_ns(record.first - WINDOW_MARGIN),
        unix_ns(record.last + WINDOW_MARGIN),
    );
    let loki = loki_lines(&args.loki, &record.trace_id, window, trust)
        .await
        .map_err(|super::Fatal(why)| DoctorError::Loki {
            url: args.loki.clone(),
            why,
        })?;
    let mut in_loki = PerSession::new();
    for line in loki {
        *in_loki.entry(line.session_id).or_default() += 1;
    }
    println!("\n{:<38} {:>7} {:>7}", "session", "files", "loki");
    let mut missing = Vec::new();
    for (session, &files) in &record.lines {
        let loki = in_loki.get(session).copied().unwrap_or(0);
        let name = session.as_deref().unwrap_or("(no session)");
        let mark = if loki >= files { "" } else { "  <- missing" };
        println!("{name:<38} {files:>7} {loki:>7}{mark}");
        if loki < files {
            missing.push(format!("{name}: {loki} of {files}"));
        }
    }

    let names = tempo_span_names(&args.tempo, &record.trace_id, trust)
        .await
        .map_err(|super::Fatal(why)| DoctorError::Tempo {
            url: args.tempo.clone(),
            why,
        })?;
    let names = names.unwrap_or_default();
    let count = |span: &str| names.iter().filter(|n| *n == span).count();
    let counts: Vec<String> = SESSION_SPANS
        .iter()
        .map(|span| format!("{} {span}", count(span)))
        .collect();
    println!(
        "\nTempo: {} span(s): {} (needs {sessions} of each)",
        names.len(),
        counts.join(", ")
    );

    if !missing.is_empty() {
        return Err(DoctorError::Loki {
            url: args.loki.clone(),
            why: format!(
                "Loki lacks lines the files hold ({}); is Vector shipping {}?",
                missing.join("; "),
                args.log_dir.display()
            ),
        });
    }
    println!("ok   Loki holds every line the files hold");
    if SESSION_SPANS
        .iter()
        .any(|span| count(span) < sessions.max(1))
    {
        return Err(DoctorError::Tempo {
            url: args.tempo.clone(),
            why: format!(
                "trace {} has {} (needs {} of each): sampled out, or not exported",
                record.trace_id,
                counts.join(", "),
                sessions.max(1)
            ),
        });
    }
    println!("ok   Tempo has the trace: {}", counts.join(", "));
    Ok(())
}

/// The one trace `id` names in the files under `dir`, counted per session.
fn read_files(dir: &std::path::Path, id: &str) -> Result<FileRecord, DoctorError> {
    let files = log_files(&[dir.to_path_buf()]).unwrap_or_default();
    if files.is_empty() {
        return Err(DoctorError::Files(format!(
            "no log files in {} (give the server's log directory with --log-dir)",
            dir.display()
        )));
    }
    let filter = Filter {
        trace_id: Some(id.to_owned()),
        ..Filter::default()
    };
    let mut matched = Vec::new();
    Tail::default()
        .read_new(&files, |line| {
            if let LogLine::Event { value, .. } = line
                && filter.matches(&value)
            {
                matched.push(value);
            }
        })
        .map_err(|e| DoctorError::Files(format!("cannot read {}: {e}", dir.display())))?;
    // The same rule as `wstrace logs`: a short id must name one trace.
    crate::tools::logs::ambiguous(matched.iter(), "trace_id", Some(id))
        .map_err(|e| DoctorError::Usage(e.to_string()))?;
    let Some(trace_id) = matched.iter().find_map(|l| l["trace_id"].as_str()) else {
        return Err(DoctorError::Files(format!(
            "no line of trace {id} in {} ({} file(s) searched)",
            dir.display(),
            files.len()
        )));
    };
    let trace_id = trace_id.to_owned();
    let times: Vec<SystemTime> = matched.iter().filter_map(line_time).collect();
    let now = SystemTime::now();
    let mut lines = PerSession::new();
    for line in &matched {
        let session = line["session_id"].as_str().map(str::to_owned);
        *lines.entry(session).or_default() += 1;
    }
    Ok(FileRecord {
        trace_id,
        lines,
        first: times.iter().min().copied().unwrap_or(now),
        last: times.iter().max().copied().unwrap_or(now),
    })
}
