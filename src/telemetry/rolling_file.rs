//! The rolling log file: `<prefix>.<period>.log` in the log directory, a
//! new one each period (UTC), the oldest deleted past `--log-max-files`.
//!
//! Names and rules are those of `tracing-appender`'s `RollingFileAppender`,
//! which this replaces because that appender hides its file, and a writer of
//! JSON lines must be able to:
//! - take back the torn end of a batch that a full disk cut short, so the
//!   file never holds half a record (the next record would be glued to it);
//! - notice that its file, or the whole directory, was deleted (the open
//!   file's link count is 0) and start a new one, instead of writing into
//!   a file no one can read.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::LogRotation;
use super::line_writer::{Batch, LineOutput, whole_lines, write_counting};

pub struct RollingFile {
    dir: PathBuf,
    prefix: String,
    rotation: LogRotation,
    max_files: Option<usize>,
    file: File,
    path: PathBuf,
    /// Bytes in `file`: where a torn batch is cut back to.
    len: u64,
    /// When the current period ends (`None`: never).
    period_end: Option<SystemTime>,
}

impl RollingFile {
    pub fn open(
        dir: &Path,
        prefix: &str,
        rotation: LogRotation,
        max_files: Option<usize>,
    ) -> io::Result<Self> {
        let now = SystemTime::now();
        let (path, period_end) = file_for(dir, prefix, rotation, now);
        let file = open(dir, &path)?;
        let len = file.metadata()?.len();
        let rolling = Self {
            dir: dir.to_path_buf(),
            prefix: prefix.to_owned(),
            rotation,
            max_files: max_files.filter(|max| *max > 0),
            file,
            path,
            len,
            period_end,
        };
        rolling.prune();
        Ok(rolling)
    }

    /// Starts the next period's file once this one's is over.
    fn roll_if_due(&mut self) -> io::Result<()> {
        let now = SystemTime::now();
        if self.period_end.is_some_and(|end| now >= end) {
            let (path, period_end) = file_for(&self.dir, &self.prefix, self.rotation, now);
            self.reopen(path)?;
            self.period_end = period_end;
            self.prune();
        }
        Ok(())
    }

    fn reopen(&mut self, path: PathBuf) -> io::Result<()> {
        self.file = open(&self.dir, &path)?;
        self.len = self.file.metadata()?.len();
        self.path = path;
        Ok(())
    }

    /// The open file was deleted (alone, or with its directory).
    fn deleted(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.nlink() == 0)
    }

    /// Keeps the newest `max_files` of this prefix's files.
    fn prune(&self) {
        let Some(max) = self.max_files else { return };
        let mut files = super::own_log_files(&self.dir, &self.prefix);
        let excess = files.len().saturating_sub(max);
        for old in files.drain(..excess) {
            let _ = std::fs::remove_file(old);
        }
    }

    /// Writes `bytes` to the current file; on a failure, cuts the file back
    /// to the last whole line and says how much of `bytes` stayed.
    fn append(&mut self, bytes: &[u8]) -> (usize, io::Result<()>) {
        let (written, result) = write_counting(&mut self.file, bytes);
        let whole = whole_lines(&bytes[..written]);
        if whole < written && self.file.set_len(self.len + whole as u64).is_err() {
            // Cannot take the fragment back: end it, so that it is one
            // corrupt line of its own and the next record stays whole.
            let _ = self.file.write_all(b"\n");
        }
        self.len += whole as u64;
        (whole, result)
    }
}

impl LineOutput for RollingFile {
    fn write_batch(&mut self, batch: &[u8]) -> Batch {
        let mut recreated = false;
        if let Err(error) = self.roll_if_due() {
            return Batch::failed(error);
        }
        if self.deleted() {
            if let Err(error) = self.reopen(self.path.clone()) {
                return Batch::failed(error);
            }
            recreated = true;
        }
        let (mut kept, mut result) = self.append(batch);
        if result.is_ok() && self.deleted() {
            // Deleted while we wrote: those lines went where no one can
            // read them. Write them again, to a new file.
            if let Err(error) = self.reopen(self.path.clone()) {
                return Batch::failed(error);
            }
            recreated = true;
            (kept, result) = self.append(batch);
        }
        Batch {
            kept,
            error: result.err(),
            recreated,
        }
    }
}

fn open(dir: &Path, path: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    OpenOptions::new().create(true).append(true).open(path)
}

/// The file for the period holding `now`, and when that period ends:
/// `<prefix>.YYYY-MM-DD[-HH[-MM]].log`, or `<prefix>.log` for `Never`.
fn file_for(
    dir: &Path,
    prefix: &str,
    rotation: LogRotation,
    now: SystemTime,
) -> (PathBuf, Option<SystemTime>) {
    let period = match rotation {
        LogRotation::Minutely => 60,
        LogRotation::Hourly => 3600,
        LogRotation::Daily => 86_400,
        LogRotation::Never => return (dir.join(format!("{prefix}.log")), None),
    };
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let start = UNIX_EPOCH + Duration::from_secs(secs - secs % period);
    // 2026-12-02T18:48:00Z
    let stamp = humantime::format_rfc3339_seconds(start).to_string();
    let date = match rotation {
        LogRotation::Minutely => format!("{}-{}-{}", &stamp[..10], &stamp[11..13], &stamp[14..16]),
        LogRotation::Hourly => format!("{}-{}", &stamp[..10], &stamp[11..13]),
        _ => stamp[..10].to_owned(),
    };
    let end = start + Duration::from_secs(period);
    (dir.join(format!("{prefix}.{date}.log")), Some(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_tracing_appenders_rules() {
        let dir = Path::new("/logs");
        // 2026-12-02T18:48:40Z
        let now = UNIX_EPOCH + Duration::from_secs(1_796_237_320);
        let name = |rotation| file_for(dir, "wstrace", rotation, now);
        assert_eq!(
            name(LogRotation::Daily).0,
            dir.join("wstrace.2026-12-02.log")
        );
        assert_eq!(
            name(LogRotation::Hourly).0,
            dir.join("wstrace.2026-12-02-18.log")
        );
        assert_eq!(
            name(LogRotation::Minutely).0,
            dir.join("wstrace.2026-12-02-18-48.log")
        );
        assert_eq!(name(LogRotation::Never), (dir.join("wstrace.log"), None));
        let end = name(LogRotation::Hourly).1.unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(end).to_string(),
            "2026-12-02T19:00:00Z"
        );
    }

    #[test]
    fn a_deleted_directory_is_recreated_and_no_line_is_lost() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("logs");
        let mut file = RollingFile::open(&dir, "wstrace", LogRotation::Never, None).unwrap();
        assert!(file.write_batch(b"{\"a\":1}\n").error.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
        let batch = file.write_batch(b"{\"b\":2}\n{\"c\":3}\n");
        assert!(batch.recreated && batch.error.is_none());
        assert_eq!(batch.kept, 16);
        let text = std::fs::read_to_string(dir.join("wstrace.log")).unwrap();
        assert_eq!(text, "{\"b\":2}\n{\"c\":3}\n");
    }

    /// An output that takes `room` bytes, then fails as a full disk does.
    struct Full {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.taken.len());
            if n == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_short_write_says_how_much_was_taken_and_whole_lines_end_at_a_newline() {
        let mut full = Full {
            taken: Vec::new(),
            room: 12,
        };
        let (written, result) = write_counting(&mut full, b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(written, 12);
        assert_eq!(result.unwrap_err().raw_os_error(), Some(28));
        assert_eq!(whole_lines(&full.taken), 8);
    }
}
