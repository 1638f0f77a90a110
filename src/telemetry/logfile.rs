//! Reading the log files back: the bunyan JSON lines the telemetry stack
//! writes, as the everyday tools (`wstrace logs`) and the explorer's log
//! search read them.
//!
//! Files are read in name order, which for the rolling
//! `wstrace.YYYY-MM-DD.log` files is time order. A line that is not a JSON
//! object is reported as corrupt, never fatal.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
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
                .is_none_or(|w| line[name].as_str() == Some(w))
        };
        field_is("trace_id", &self.trace_id)
            && field_is("session_id", &self.session_id)
            && self
                .min_level
                .is_none_or(|min| line["level"].as_u64().unwrap_or(0) >= min)
            && self.since.is_none_or(|since| {
                line["time"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
                    .is_some_and(|t| t >= since)
            })
    }
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
        } else {
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
                match serde_json::from_str::<Value>(&raw) {
                    Ok(value) if value.is_object() => each(LogLine::Event { raw, value }),
                    _ => each(LogLine::Corrupt {
                        file: file.clone(),
                        line: *line_no,
                        raw,
                    }),
                }
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
