//! Reading the log files back: the bunyan JSON lines the telemetry stack
//! writes, as the everyday tools (`wstrace logs`) and the explorer's log
//! search read them.
//!
//! Files are read in name order, which for the rolling
//! `wstrace.YYYY-MM-DD.log` files is time order. A line that is not a JSON
//! object is reported as corrupt, never fatal.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::SystemTime;

/// What a line must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub trace_id: Option<String>,
    pub session_id: Option<String>,
    pub min_level: Option<u64>,
    pub since: Option<SystemTime>,
}

impl Filter {
    pub fn matches(&self, line: &Value) -> bool {
        let field_is = |name: &str, want: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| line[name].as_str().is_some_and(|have| id_matches(have, w)))
        };
        field_is("trace_id", &self.trace_id)
            && field_is("session_id", &self.session_id)
            && self
                .min_level
                .is_none_or(|min| line["level"].as_u64().unwrap_or(0) >= min)
            && self
                .since
                .is_none_or(|since| line_time(line).is_some_and(|t| t >= since))
    }
}

/// When a line was written (its `time`), if it says.
pub fn line_time(line: &Value) -> Option<SystemTime> {
    let time = line["time"].as_str()?;
    humantime::parse_rfc3339_weak(time.trim_end_matches('Z')).ok()
}

/// Shortest part of an id a search accepts in place of the whole id.
pub const MIN_SHORT_ID: usize = 8;

/// `want` names `have`: the whole id, or at least [`MIN_SHORT_ID`]
/// characters from its start or its end (tools print session ids by their
/// end, since a UUIDv7 starts with its time, and trace ids by their start).
pub fn id_matches(have: &str, want: &str) -> bool {
    have == want || (want.len() >= MIN_SHORT_ID && (have.starts_with(want) || have.ends_with(want)))
}

/// One line read from a log file.
#[derive(Debug, Clone, PartialEq)]
pub enum LogLine {
    Event {
        raw: String,
        value: Value,
    },
    Corrupt {
        file: PathBuf,
        line: usize,
        raw: String,
    },
}

impl LogLine {
    /// Line `line` of `file`: an event if it is a JSON object, else corrupt.
    pub fn parse(raw: String, file: &std::path::Path, line: usize) -> Self {
        match serde_json::from_str::<Value>(&raw) {
            Ok(value) if value.is_object() => LogLine::Event { raw, value },
            _ => LogLine::Corrupt {
                file: file.to_path_buf(),
                line,
                raw,
            },
        }
    }
}

/// The log files under the given paths, in name (= time) order.
pub fn log_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                let file = entry?.path();
                if file.extension().is_some_and(|e| e == "log") {
                    files.push(file);
                }
            }
        } else if path.exists() {
            // A path that is not there (a typo) is no file, not an empty one.
            files.push(path.clone());
        }
    }
    files.sort();
    Ok(files)
}

/// Reads new complete lines of each file from where the last call stopped.
/// A file that shrank (truncated or replaced) is read again from the start;
/// a partly written last line waits for its newline.
#[derive(Debug, Default)]
pub struct Tail {
    offsets: HashMap<PathBuf, (u64, usize)>,
}

impl Tail {
    pub fn read_new(
        &mut self,
        files: &[PathBuf],
        mut each: impl FnMut(LogLine),
    ) -> std::io::Result<()> {
        for file in files {
            let (offset, line_no) = self.offsets.entry(file.clone()).or_default();
            let Ok(mut handle) = std::fs::File::open(file) else {
                continue; // rotated away between listing and opening
            };
            let len = handle.metadata()?.len();
            if len < *offset {
                *offset = 0;
                *line_no = 0;
            }
            handle.seek(SeekFrom::Start(*offset))?;
            let mut bytes = Vec::new();
            handle.take(len - *offset).read_to_end(&mut bytes)?;
            let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for raw in bytes[..complete]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                *line_no += 1;
                let raw = String::from_utf8_lossy(raw).into_owned();
                each(LogLine::parse(raw, file, *line_no));
            }
            *offset += complete as u64;
        }
        Ok(())
    }
}

/// Every matching line (and every corrupt line) of the files, in order.
pub fn search(paths: &[PathBuf], filter: &Filter) -> std::io::Result<Vec<LogLine>> {
    let mut out = Vec::new();
    Tail::default().read_new(&log_files(paths)?, |line| match &line {
        LogLine::Event { value, .. } if !filter.matches(value) => {}
        _ => out.push(line),
    })?;
    Ok(out)
}

/// What a log search may look for: a trace or session id, full or short
/// (hex digits and dashes, at most 64).
pub fn valid_search_id(q: &str) -> bool {
    !q.is_empty() && q.len() <= 64 && q.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Bounds of one [`search_for`].
#[derive(Debug, Clone, Copy)]
pub struct SearchLimits {
    /// Stop after reading this many bytes of log.
    pub max_bytes: u64,
    /// Stop after this many matching lines.
    pub max_lines: usize,
}

/// What one [`search_for`] found, and whether it stopped early.
#[derive(Debug, Default)]
pub struct SearchOutcome {
    pub lines: Vec<Value>,
    /// Lines that contained the text but were not JSON objects.
    pub corrupt: usize,
    pub bytes_scanned: u64,
    /// Stopped at `max_lines`: there may be more matches.
    pub lines_capped: bool,
    /// Stopped at `max_bytes`: later files were not read.
    pub bytes_capped: bool,
}

/// Reads the files line by line, oldest first, in constant memory: only a
/// line that contains `needle` is parsed, and kept if `keep` says so.
pub fn search_for(
    paths: &[PathBuf],
    needle: &str,
    keep: impl Fn(&Value) -> bool,
    limits: SearchLimits,
) -> std::io::Result<SearchOutcome> {
    let mut outcome = SearchOutcome::default();
    let mut line = Vec::with_capacity(4096);
    for file in log_files(paths)? {
        let Ok(handle) = std::fs::File::open(&file) else {
            continue; // rotated away between listing and opening
        };
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, handle);
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            outcome.bytes_scanned += read as u64;
            if outcome.bytes_scanned > limits.max_bytes {
                outcome.bytes_capped = true;
                return Ok(outcome);
            }
            let text = String::from_utf8_lossy(&line);
            if !text.contains(needle) {
                continue;
            }
            match serde_json::from_str::<Value>(text.trim_end()) {
                Ok(value) if value.is_object() => {
                    if keep(&value) {
                        if outcome.lines.len() == limits.max_lines {
                            outcome.lines_capped = true;
                            return Ok(outcome);
                        }
                        outcome.lines.push(value);
                    }
                }
                _ => outcome.corrupt += 1,
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn log_dir(lines: &[String]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::create(dir.path().join("wstrace.2026-11-23.log")).unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        dir
    }

    #[test]
    fn search_keeps_matches_and_says_where_it_stopped() {
        let mut lines: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"msg":"noise {i}","trace_id":"other"}}"#))
            .collect();
        for i in 0..5 {
            lines.insert(
                i * 150,
                format!(r#"{{"msg":"hit {i}","trace_id":"abc123"}}"#),
            );
        }
        lines.insert(10, "abc123 not json".to_string());
        let dir = log_dir(&lines);
        let paths = [dir.path().to_path_buf()];
        let keep = |v: &Value| v["trace_id"] == "abc123";
        let all = SearchLimits {
            max_bytes: u64::MAX,
            max_lines: 100,
        };
        let found = search_for(&paths, "abc123", keep, all).unwrap();
        assert_eq!(found.lines.len(), 5);
        assert_eq!(found.lines[4]["msg"], "hit 4");
        assert_eq!(found.corrupt, 1);
        assert!(!found.lines_capped && !found.bytes_capped);

        let few = SearchLimits {
            max_lines: 2,
            ..all
        };
        let found = search_for(&paths, "abc123", keep, few).unwrap();
        assert_eq!(found.lines.len(), 2);
        assert!(found.lines_capped);

        let short = SearchLimits {
            max_bytes: 4096,
            ..all
        };
        let found = search_for(&paths, "abc123", keep, short).unwrap();
        assert!(found.bytes_capped);
        assert!(found.bytes_scanned <= 4096 + 64);
    }
}
