//! A batching writer thread per log output, which no output can stall.
//!
//! `tracing-appender`'s non-blocking writer sends each line through a
//! channel to its thread, which wakes for it and writes it with a syscall
//! of its own: two log lines per session cost a session more CPU than its
//! two spans (BENCHMARKS.md). Here a line is appended to a shared buffer
//! under a mutex; the thread takes the whole buffer at once and writes it
//! with one `write`, then waits [`LINGER`] for more before writing again,
//! so a burst of lines costs one wake-up and one syscall.
//!
//! While the output keeps up nothing is dropped: when the buffer holds
//! `max_bytes`, writers wait for the thread to take it. An output that
//! takes nothing for its `stall` bound (a stdout whose reader stopped
//! reading, a hung disk) is *stalled*: its lines are dropped and counted,
//! without waiting, until it takes a batch again, so that one stuck output
//! stops neither the server nor the other outputs. Lines the output
//! refuses (a full disk) are counted too, with the cause, and reported by
//! the server's upkeep. A line reaches the output at most [`LINGER`] after
//! it was logged, and every line is written before the guard's drop
//! returns.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread collects lines after a write before the
/// next: the bound on how late a line reaches its file.
pub const LINGER: Duration = Duration::from_millis(5);

/// Buffers above this capacity are given back after a burst.
const KEPT_CAPACITY: usize = 256 * 1024;

/// Where a writer thread's batches go.
pub trait LineOutput: Send + 'static {
    /// Writes whole lines; says how many bytes of whole lines stayed.
    fn write_batch(&mut self, batch: &[u8]) -> Batch;
}

/// What an output did with one batch.
#[derive(Debug)]
pub struct Batch {
    /// Bytes of whole lines written, from the start of the batch.
    pub kept: usize,
    /// Why the rest was not.
    pub error: Option<io::Error>,
    /// The output's file had been deleted and was started again.
    pub recreated: bool,
}

impl Batch {
    pub fn failed(error: io::Error) -> Self {
        Self {
            kept: 0,
            error: Some(error),
            recreated: false,
        }
    }
}

/// stdout, or any stream: what it took stays (a pipe cannot take back a
/// torn line; a file can, see `RollingFile`).
pub struct Stream<W>(pub W);

impl<W: Write + Send + 'static> LineOutput for Stream<W> {
    fn write_batch(&mut self, batch: &[u8]) -> Batch {
        let (written, result) = write_counting(&mut self.0, batch);
        Batch {
            kept: whole_lines(&batch[..written]),
            error: result.err(),
            recreated: false,
        }
    }
}

/// Writes as much of `bytes` as the output takes; returns how much that
/// was, and the error that stopped it.
pub fn write_counting(output: &mut impl Write, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match output.write(&bytes[written..]) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return (written, Err(error)),
        }
    }
    (written, output.flush())
}

/// Bytes of `bytes` up to and including its last newline.
pub fn whole_lines(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits here for lines (or for the end of its linger).
    lines: Condvar,
    /// Writers wait here for room.
    room: Condvar,
    max_bytes: usize,
    /// How long a writer waits for room before the output counts as
    /// stalled.
    stall: Duration,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    lines: u64,
    /// The thread is waiting for a first line: the next one wakes it.
    idle: bool,
    /// The output took nothing for `stall`: lines are dropped at once
    /// until it takes a batch again.
    stalled: bool,
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
    counts: Arc<LineCounts>,
}

/// Ends the writer thread once every line handed to it is written.
pub struct LineWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What one output did with its lines, for `/metrics` and the upkeep's
/// reports.
#[derive(Debug, Default)]
pub struct LineCounts {
    /// Lines taken into the buffer.
    pub queued: AtomicU64,
    /// Lines the output took.
    pub written: AtomicU64,
    /// Buffered lines the output refused (a full disk, a closed pipe).
    pub failed: AtomicU64,
    /// Lines not buffered: the output was stalled, or its thread gone.
    pub refused: AtomicU64,
    /// Times the output's file was deleted and started again.
    pub recreated: AtomicU64,
    /// Why lines were last lost.
    cause: Mutex<Option<String>>,
}

impl LineCounts {
    /// Lines this output lost, for any reason.
    pub fn dropped(&self) -> u64 {
        self.failed.load(Relaxed) + self.refused.load(Relaxed)
    }

    /// Buffered lines the thread is done with, written or failed.
    pub fn done(&self) -> u64 {
        self.written.load(Relaxed) + self.failed.load(Relaxed)
    }

    /// Every buffered line is written or failed.
    pub fn drained(&self) -> bool {
        self.done() >= self.queued.load(Relaxed)
    }

    /// Why lines were lost since the last call.
    pub fn take_cause(&self) -> Option<String> {
        self.cause.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn lost(&self, counter: &AtomicU64, lines: u64, cause: impl FnOnce() -> String) {
        counter.fetch_add(lines, Relaxed);
        let mut kept = self.cause.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_none() {
            *kept = Some(cause());
        }
    }
}

/// What an output's error means, in words an operator acts on.
fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::StorageFull => "no space left on the device (ENOSPC)".to_owned(),
        _ => error.to_string(),
    }
}

/// Starts a writer thread named `name` for `output`: buffers up to
/// `max_bytes`, and drops (counted) while the output takes nothing for
/// `stall`.
pub fn line_writer(
    output: impl LineOutput,
    name: &str,
    max_bytes: usize,
    stall: Duration,
) -> io::Result<(LineWriter, LineWriterGuard, Arc<LineCounts>)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        lines: Condvar::new(),
        room: Condvar::new(),
        max_bytes: max_bytes.max(1),
        stall,
    });
    let counts = Arc::new(LineCounts::default());
    let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
        let shared = shared.clone();
        let counts = counts.clone();
        move || run(&shared, output, &counts)
    })?;
    Ok((
        LineWriter {
            shared: shared.clone(),
            counts: counts.clone(),
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

fn run(shared: &Shared, mut output: impl LineOutput, counts: &LineCounts) {
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
        let outcome = output.write_batch(&batch);
        let kept = batch[..outcome.kept]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
        counts.written.fetch_add(kept, Relaxed);
        if outcome.recreated {
            counts.recreated.fetch_add(1, Relaxed);
        }
        if let Some(error) = outcome.error {
            if !reported_failure {
                // The log itself is what failed: stderr is what is left.
                eprintln!("wstrace: cannot write log lines: {}", describe(&error));
                reported_failure = true;
            }
            counts.lost(&counts.failed, lines - kept, || describe(&error));
        }
        batch.clear();
        if batch.capacity() > KEPT_CAPACITY {
            batch = Vec::new();
        }
        // It took a batch: it is not stalled (any more), and writers
        // waiting for room may go on.
        let mut state = lock(shared);
        state.stalled = false;
        shared.room.notify_all();
        // Let the next lines gather; a writer that fills half the buffer
        // meanwhile cuts this short.
        if !closed && state.buffer.len() < shared.max_bytes / 2 && !state.closed {
            drop(shared.lines.wait_timeout(state, LINGER));
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
    /// full, and at most the output's stall bound. A line not taken is
    /// counted as refused (and the error says why).
    pub fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let shared = &*self.shared;
        let mut state = lock(shared);
        while state.buffer.len() >= shared.max_bytes && !state.closed && !state.stalled {
            let (next, waited) = shared
                .room
                .wait_timeout(state, shared.stall)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if waited.timed_out() && state.buffer.len() >= shared.max_bytes {
                state.stalled = true;
            }
        }
        if state.closed || state.stalled {
            let closed = state.closed;
            drop(state);
            // Said once per report (the cause is kept only if none is):
            // nothing is formatted per dropped line.
            self.counts.lost(&self.counts.refused, 1, || match closed {
                true => "the log writer has stopped".to_owned(),
                false => format!("the output took nothing for {:?}", shared.stall),
            });
            return Err(io::ErrorKind::WouldBlock.into());
        }
        state.buffer.extend_from_slice(line);
        state.lines += 1;
        self.counts.queued.fetch_add(1, Relaxed);
        let wake = state.idle || state.buffer.len() >= shared.max_bytes / 2;
        drop(state);
        if wake {
            shared.lines.notify_one();
        }
        Ok(())
    }
}

impl LineWriterGuard {
    /// Stops taking lines without waiting for the thread, which is stuck
    /// in its output (a write that never returns).
    pub fn abandon(mut self) {
        self.close();
        drop(self.thread.take());
    }

    fn close(&self) {
        lock(&self.shared).closed = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
    }
}

impl Drop for LineWriterGuard {
    fn drop(&mut self) {
        self.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOREVER: Duration = Duration::from_secs(3600);

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
            line_writer(Stream(kept.clone()), "test-log", 4096, FOREVER).unwrap();
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
        let (mut writer, guard, counts) =
            line_writer(Stream(Broken), "test-log", 64, FOREVER).unwrap();
        for _ in 0..100 {
            writer.write_all(b"{\"msg\":\"lost\"}\n").unwrap();
        }
        drop(guard);
        assert_eq!(counts.failed.load(Relaxed), 100);
        assert_eq!(counts.dropped(), 100);
        assert_eq!(counts.written.load(Relaxed), 0);
        assert_eq!(counts.take_cause().as_deref(), Some("disk full"));
        assert!(writer.write_all(b"late\n").is_err(), "after the guard");
        assert_eq!(counts.refused.load(Relaxed), 1);
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
        let (mut writer, guard, _) = line_writer(Stream(Panics), "test-log", 16, FOREVER).unwrap();
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

    /// An output that blocks (a stdout nobody reads) until released.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Kept);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (released, wake) = &*self.0;
            let mut released = released.lock().unwrap();
            while !*released {
                released = wake.wait(released).unwrap();
            }
            self.1.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_drops_its_own_lines_after_the_bound_and_recovers() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let kept = Kept::default();
        let stall = Duration::from_millis(50);
        let (mut writer, guard, counts) = line_writer(
            Stream(Stuck(gate.clone(), kept.clone())),
            "test-log",
            256,
            stall,
        )
        .unwrap();
        let started = std::time::Instant::now();
        for i in 0..1000 {
            writer
                .write_all(format!("{{\"i\":{i:04}}}\n").as_bytes())
                .ok();
        }
        // One wait of the bound, not one per line, and never forever.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let refused = counts.refused.load(Relaxed);
        assert!(refused > 900, "{refused}");
        assert!(counts.take_cause().unwrap().contains("took nothing"));
        // Released: what was buffered is written, and new lines go through.
        {
            let (released, wake) = &*gate;
            *released.lock().unwrap() = true;
            wake.notify_all();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !counts.drained() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        writer.write_all(b"{\"after\":1}\n").unwrap();
        drop(guard);
        let text = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with("{\"after\":1}\n"));
        let lines = text.lines().count() as u64;
        assert_eq!(lines, counts.written.load(Relaxed));
        assert_eq!(lines + refused, 1001, "every line written or counted");
    }
}
