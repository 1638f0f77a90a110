//! A lossless, batching writer thread for log lines.
//!
//! `tracing-appender`'s non-blocking writer sends each line through a
//! channel to its thread, which wakes for it and writes it with a syscall
//! of its own: two log lines per session cost a session more CPU than its
//! two spans (BENCHMARKS.md). Here a line is appended to a shared buffer
//! under a mutex; the thread takes the whole buffer at once and writes it
//! with one `write_all`, then waits [`LINGER`] for more before writing
//! again, so a burst of lines costs one wake-up and one syscall.
//!
//! Nothing is dropped: when the buffer holds `max_bytes`, writers wait for
//! the thread to take it. A line reaches the file at most [`LINGER`] after
//! it was logged, and every line is written before the guard's drop
//! returns.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::TelemetryCounters;

/// How long the writer thread collects lines after a write before the
/// next: the bound on how late a line reaches its file.
pub const LINGER: Duration = Duration::from_millis(5);

/// Buffers above this capacity are given back after a burst.
const KEPT_CAPACITY: usize = 256 * 1024;

struct Shared {
    state: Mutex<State>,
    /// The thread waits here for lines (or for the end of its linger).
    lines: Condvar,
    /// Writers wait here for room.
    room: Condvar,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    lines: u64,
    /// The thread is waiting for a first line: the next one wakes it.
    idle: bool,
    closed: bool,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding this lock leaves the buffer whole (appends and
    // swaps do not unwind midway): keep going.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands lines to the writer thread. Each `write_all` must be one whole
/// line: lines from many threads are never interleaved.
#[derive(Clone)]
pub struct LineWriter {
    shared: Arc<Shared>,
}

/// Ends the writer thread once every line handed to it is written.
pub struct LineWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Counts of a writer thread's lines.
#[derive(Debug, Default)]
pub struct LineCounts {
    /// Lines written to the output.
    pub written: AtomicU64,
    /// Lines the output refused (a full disk, a closed pipe).
    pub failed: AtomicU64,
}

impl LineCounts {
    /// Lines the thread is done with, written or not.
    pub fn done(&self) -> u64 {
        self.written.load(Relaxed) + self.failed.load(Relaxed)
    }
}

/// Starts a writer thread named `name` for `output`. Lines the output
/// refuses are also added to `dropped` (`wstrace_log_lines_dropped_total`).
pub fn line_writer<W: Write + Send + 'static>(
    output: W,
    name: &str,
    max_bytes: usize,
    dropped: Arc<TelemetryCounters>,
) -> io::Result<(LineWriter, LineWriterGuard, Arc<LineCounts>)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        lines: Condvar::new(),
        room: Condvar::new(),
        max_bytes: max_bytes.max(1),
    });
    let counts = Arc::new(LineCounts::default());
    let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
        let shared = shared.clone();
        let counts = counts.clone();
        move || run(&shared, output, &counts, &dropped)
    })?;
    Ok((
        LineWriter {
            shared: shared.clone(),
        },
        LineWriterGuard {
            shared,
            thread: Some(thread),
        },
        counts,
    ))
}

/// Marks the writer closed when its thread ends, even by a panic: writers
/// then get an error (counted as dropped) instead of waiting for room
/// forever.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        lock(self.0).closed = true;
        self.0.room.notify_all();
    }
}

fn run<W: Write>(shared: &Shared, mut output: W, counts: &LineCounts, dropped: &TelemetryCounters) {
    let _stopped = Stopped(shared);
    let mut batch = Vec::new();
    let mut reported_failure = false;
    loop {
        let (lines, closed) = {
            let mut state = lock(shared);
            while state.buffer.is_empty() && !state.closed {
                state.idle = true;
                state = shared.lines.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.idle = false;
            if state.buffer.is_empty() {
                return;
            }
            std::mem::swap(&mut state.buffer, &mut batch);
            let lines = std::mem::take(&mut state.lines);
            shared.room.notify_all();
            (lines, state.closed)
        };
        match output.write_all(&batch).and_then(|()| output.flush()) {
            Ok(()) => counts.written.fetch_add(lines, Relaxed),
            Err(error) => {
                if !reported_failure {
                    // The log itself is what failed: stderr is what is left.
                    eprintln!("wstrace: cannot write log lines: {error}");
                    reported_failure = true;
                }
                dropped.log_lines_dropped.fetch_add(lines, Relaxed);
                counts.failed.fetch_add(lines, Relaxed)
            }
        };
        batch.clear();
        if batch.capacity() > KEPT_CAPACITY {
            batch = Vec::new();
        }
        if !closed {
            // Let the next lines gather; a writer that fills half the
            // buffer meanwhile cuts this short.
            let state = lock(shared);
            if state.buffer.len() < shared.max_bytes / 2 && !state.closed {
                drop(shared.lines.wait_timeout(state, LINGER));
            }
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.write_line(line)?;
        Ok(line.len())
    }

    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        self.write_line(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LineWriter {
    /// Hands one whole line to the thread; waits only while its buffer is
    /// full.
    pub fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let shared = &*self.shared;
        let mut state = lock(shared);
        // Lossless: wait for the thread to take the buffer.
        while state.buffer.len() >= shared.max_bytes && !state.closed {
            state = shared.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the log writer has stopped",
            ));
        }
        state.buffer.extend_from_slice(line);
        state.lines += 1;
        let wake = state.idle || state.buffer.len() >= shared.max_bytes / 2;
        drop(state);
        if wake {
            shared.lines.notify_one();
        }
        Ok(())
    }
}

impl Drop for LineWriterGuard {
    fn drop(&mut self) {
        lock(&self.shared).closed = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that keeps what it was given.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_many_threads_is_written_whole_and_once() {
        let kept = Kept::default();
        // A small buffer, so writers wait for room many times.
        let (writer, guard, counts) =
            line_writer(kept.clone(), "test-log", 4096, Arc::default()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        writer
                            .write_all(format!("{{\"t\":{t},\"i\":{i}}}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        assert_eq!(counts.written.load(Relaxed), 20_000);
        let text = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = value["t"].as_u64().unwrap() as usize;
            // Each thread's lines in its own order, none lost or repeated.
            assert_eq!(value["i"].as_u64().unwrap(), next[t]);
            next[t] += 1;
        }
        assert_eq!(next, [5000; 4]);
    }

    #[test]
    fn a_failing_output_counts_its_lines_and_never_blocks_writers() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dropped = Arc::new(TelemetryCounters::default());
        let (mut writer, guard, counts) =
            line_writer(Broken, "test-log", 64, dropped.clone()).unwrap();
        for _ in 0..100 {
            writer.write_all(b"{\"msg\":\"lost\"}\n").unwrap();
        }
        drop(guard);
        assert_eq!(counts.failed.load(Relaxed), 100);
        assert_eq!(dropped.log_lines_dropped.load(Relaxed), 100);
        assert_eq!(counts.written.load(Relaxed), 0);
        assert!(writer.write_all(b"late\n").is_err(), "after the guard");
    }

    #[test]
    fn writers_get_an_error_not_a_wait_when_the_thread_has_died() {
        struct Panics;
        impl Write for Panics {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                panic!("output panicked");
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut writer, guard, _) = line_writer(Panics, "test-log", 16, Arc::default()).unwrap();
        // The first line kills the thread; later ones must not block on
        // the full buffer.
        let mut refused = false;
        for _ in 0..1000 {
            if writer.write_all(b"{\"msg\":\"x\"}\n").is_err() {
                refused = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(refused, "a dead writer thread must refuse lines");
        drop(guard);
    }
}
