//! The tools as a user meets them: the real `wstrace` binary driven as a
//! child process against a real server. How the client ends a session (and
//! its exit codes), what the load generator reports when the server
//! refuses its messages, and how `wstrace logs` answers short ids, several
//! directories and missing files.

use crate::common::*;
use serde_json::Value;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "tools-admin-token-0c5e";

fn wstrace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn closed_lines(server: Wstrace) -> Vec<Value> {
    server.sigterm();
    let (_, _, log_dir) = server.wait();
    read_log_lines(log_dir.path())
        .into_iter()
        .filter(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
        .collect()
}

#[test]
fn the_client_closes_with_1000_waits_for_piped_replies_and_says_what_is_wrong() {
    let server = Wstrace::start(&[]);
    let url = server.url();
    // Piped input: every reply arrives before the client closes.
    let mut piped = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["client", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    piped
        .stdin
        .take()
        .unwrap()
        .write_all(b"hi\n/ping\n/sub lobby\n")
        .unwrap();
    let output = piped.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for reply in [
        r#""type":"echo""#,
        r#""type":"pong""#,
        r#""type":"subscribed""#,
    ] {
        assert!(stdout.contains(reply), "{reply} missing: {stdout}");
    }
    // --send, then the end of its lines; and /quit.
    let sent = wstrace(&["client", &url, "--send", "x", "--expect", "1"]);
    assert_eq!(sent.status.code(), Some(0));
    let quit = wstrace(&["client", &url, "--send", "/quit"]);
    assert_eq!(quit.status.code(), Some(0));

    // Bad usage exits 64, with what was wrong; a refused port exits 2.
    for (args, says) in [
        (vec!["client"], "URL"),
        (vec!["client", &url, "--no-such-flag"], "--no-such-flag"),
        (vec!["client", "localhost:8080"], "invalid URL"),
        (vec!["client", "http://127.0.0.1:8080/ws"], "invalid URL"),
        (vec!["load", &url, "-c", "0"], "at least 1"),
    ] {
        let output = wstrace(&args);
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let dead = format!("ws://127.0.0.1:{}/ws", free_port());
    assert_eq!(
        wstrace(&["client", &dead, "--send", "x"]).status.code(),
        Some(2)
    );

    let closed = closed_lines(server);
    assert_eq!(closed.len(), 3, "{closed:#?}");
    for line in closed {
        assert_eq!(
            line["close_code"], 1000,
            "the client closes normally: {line}"
        );
        assert_eq!(line["closed_by"], "client");
    }
}

#[test]
fn the_client_exits_at_once_when_the_server_closes_the_session() {
    let server = Wstrace::start(&[("WSTRACE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    // An interactive client whose input stays open: nothing to read, ever.
    let mut client = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["client", &server.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let session = word_after(&first, "session_id=").to_owned();
    let addr = server.addr.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let kicked = runtime.block_on(http(
        addr,
        "DELETE",
        &format!("/api/sessions/{session}?code=4000&reason=bye"),
        &[("authorization", &auth)],
        None,
    ));
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    let started = Instant::now();
    let status = wait_for(Duration::from_secs(10), "the client to exit", || {
        client.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(4), "the server closed the session");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it hung on stdin"
    );
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    assert!(rest.contains("closed by server: 4000 bye"), "{rest}");
    drop(client.stdin.take());
    // It answered the server's Close: the kick closed cleanly.
    let closed = closed_lines(server);
    assert_eq!(closed.len(), 1);
    assert_eq!(
        (
            closed[0]["closed_by"].as_str(),
            closed[0]["close_clean"].as_bool()
        ),
        (Some("admin"), Some(true)),
        "{}",
        closed[0]
    );
}

#[test]
fn the_client_closes_cleanly_on_timeout_names_itself_and_sends_raw_text() {
    let server = Wstrace::start(&[]);
    let url = server.url();
    // --timeout before --expect is met: exit 3, and a Close 1000 first.
    let late = wstrace(&[
        "client",
        &url,
        "--send",
        "x",
        "--expect",
        "5",
        "--timeout",
        "1s",
    ]);
    assert_eq!(late.status.code(), Some(3));
    // /raw sends text as it is: not JSON, so the server answers an error
    // frame, and with --send the exit code says so (5).
    let raw = wstrace(&["client", &url, "--send", "/raw {not json", "--expect", "1"]);
    assert_eq!(raw.status.code(), Some(5), "{raw:?}");
    let stdout = String::from_utf8(raw.stdout).unwrap();
    assert!(stdout.contains(r#""type":"error""#), "{stdout}");
    server.sigterm();
    let (_, _, log_dir) = server.wait();
    let lines = read_log_lines(log_dir.path());
    let closed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
        .collect();
    assert_eq!(closed.len(), 2);
    for line in closed {
        assert_eq!(
            (line["close_code"].as_u64(), line["close_clean"].as_bool()),
            (Some(1000), Some(true)),
            "{line}"
        );
    }
    let opened: Vec<&Value> = lines
        .iter()
        .filter(|l| l["msg"] == wstrace::events::SessionOpened::MESSAGE)
        .collect();
    let agent = format!("wstrace-client/{}", env!("CARGO_PKG_VERSION"));
    assert!(
        opened
            .iter()
            .all(|l| l["user_agent.original"] == agent.as_str()),
        "{opened:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["msg"] == wstrace::events::ClientFrameRejected::MESSAGE),
        "the raw text reached the server unchanged and was refused there"
    );
}

#[test]
fn load_reports_refused_messages_stops_without_progress_and_exits_non_zero() {
    let server = Wstrace::start(&[
        ("WSTRACE_MESSAGES_PER_SECOND", "5"),
        ("WSTRACE_MESSAGE_BURST", "20"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let started = Instant::now();
    let output = wstrace(&[
        "load",
        &server.url(),
        "-c",
        "2",
        "-m",
        "600",
        "--max-duration",
        "60s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        elapsed < Duration::from_secs(45),
        "stopped long before --max-duration: {elapsed:?}"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stdout.contains("error frames  rate_limited×"), "{stdout}");
    assert!(
        stdout.contains("raise the server's --messages-per-second"),
        "{stdout}"
    );
    assert!(stderr.contains("refused"), "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        report["error_frames"]["rate_limited"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(report["timed_out"], false, "{report}");

    // A refused port: the reason, no made-up latency, and a failure.
    let dead = format!("ws://127.0.0.1:{}/ws", free_port());
    let output = wstrace(&["load", &dead, "-c", "2", "-m", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("round trip (µs)  -  (n=0)"), "{stdout}");
    assert!(
        stdout.contains("failed: connect: connection refused: 2"),
        "{stdout}"
    );

    // The tool closes its sessions normally, whatever the server did.
    for line in closed_lines(server) {
        assert!(
            [1000, 1008].contains(&line["close_code"].as_u64().unwrap()),
            "{line}"
        );
    }
}

#[test]
fn logs_answers_short_ids_merges_instances_and_says_when_there_is_nothing() {
    let a = Wstrace::start(&[("WSTRACE_INSTANCE_ID", "inst-a")]);
    let b = Wstrace::start(&[("WSTRACE_INSTANCE_ID", "inst-b")]);
    for server in [&a, &b, &a] {
        let output = wstrace(&["client", &server.url(), "--send", "hi", "--expect", "1"]);
        assert_eq!(output.status.code(), Some(0));
    }
    let dirs: Vec<_> = [a, b]
        .into_iter()
        .map(|server| {
            server.sigterm();
            server.wait().2
        })
        .collect();
    let (dir_a, dir_b) = (
        dirs[0].path().to_str().unwrap(),
        dirs[1].path().to_str().unwrap(),
    );

    // Two directories: one stream, in time order, both instances in it.
    let merged = wstrace(&["logs", "--json", dir_a, dir_b]);
    assert_eq!(merged.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8(merged.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let times: Vec<&str> = lines.iter().map(|l| l["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "merged by time");
    let opened: Vec<&Value> = lines
        .iter()
        .filter(|l| l["msg"] == wstrace::events::SessionOpened::MESSAGE)
        .collect();
    assert_eq!(opened.len(), 3);
    let instances: Vec<&str> = opened
        .iter()
        .map(|l| l["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(instances, ["inst-a", "inst-b", "inst-a"]);

    // The short id the human output prints finds the session.
    let session = opened[1]["session_id"].as_str().unwrap();
    let short = &session[session.len() - 8..];
    let human = wstrace(&["logs", "--color", "never", "--session", short, dir_a, dir_b]);
    assert_eq!(human.status.code(), Some(0));
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(human.lines().count() >= 2, "{human}");
    assert!(
        human.lines().all(|l| l.contains(&format!(" {short} "))),
        "{human}"
    );
    assert!(human.contains("@inst-b"), "{human}");
    // ...and a start shared by every session is refused as ambiguous.
    let prefix = &session[..8];
    let ambiguous = wstrace(&["logs", "--session", prefix, dir_a, dir_b]);
    assert_eq!(ambiguous.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ambiguous.stderr).contains("give more characters"));

    // --since takes an RFC 3339 time. Nothing matched: like grep, exit 1
    // and one line saying what was searched where.
    let late = wstrace(&["logs", "--json", "--since", "2999-01-01T00:00:00Z", dir_a]);
    assert_eq!(late.status.code(), Some(1));
    assert!(late.stdout.is_empty());
    let said = String::from_utf8_lossy(&late.stderr);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains(&format!("no line in the time asked in {dir_a} (1 file(s))")),
        "{said}"
    );
    let unknown = wstrace(&["logs", "--trace", "ffffffffffffffff", dir_a]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no line of trace ffffffffffffffff in")
    );
    // An id too short to name anything is said to be so.
    let short = wstrace(&["logs", "--session", &session[session.len() - 5..], dir_a]);
    assert_eq!(short.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&short.stderr).contains("shorter than 8 characters"));

    // No log files, or no such directory: an error that says where it looked.
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("typo");
    for dir in [empty.path(), missing.as_path()] {
        let nothing = wstrace(&["logs", "--log-dir", dir.to_str().unwrap()]);
        assert_eq!(nothing.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&nothing.stderr);
        assert!(
            stderr.contains(&format!("no log files in {}", dir.display())),
            "{stderr}"
        );
    }

    // Standard input, as `bunyan` reads it: `-`, or a pipe with no PATH.
    let all: String = read_log_lines(dirs[0].path())
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    for args in [
        &["logs", "--session", short_id(session), "-"][..],
        &["logs", "--session", short_id(session)],
    ] {
        let piped = wstrace_with_stdin(args, &all);
        assert_eq!(
            piped.status.code(),
            Some(1),
            "B's session is not in A's lines"
        );
    }
    let a_session = opened[0]["session_id"].as_str().unwrap();
    let piped = wstrace_with_stdin(
        &["logs", "--color", "never", "--session", short_id(a_session)],
        &all,
    );
    assert_eq!(piped.status.code(), Some(0), "{piped:?}");
    let text = String::from_utf8(piped.stdout).unwrap();
    assert!(
        text.contains("session opened") && text.contains("session closed"),
        "{text}"
    );

    // A reader that stops early (`| head -1`): no "Broken pipe", exit 0.
    let many: String = all.repeat(200);
    let file = empty.path().join("many.log");
    std::fs::write(&file, &many).unwrap();
    let pipeline = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} logs --color never {} | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}",
            env!("CARGO_BIN_EXE_wstrace"),
            file.display()
        ))
        .output()
        .unwrap();
    assert!(
        pipeline.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&pipeline.stderr)
    );
    assert_eq!(pipeline.status.code(), Some(0));
}

/// The last 8 characters of a session id, as the human output shows it.
fn short_id(session: &str) -> &str {
    &session[session.len() - 8..]
}

/// `wstrace ARGS` with `input` piped to its standard input.
fn wstrace_with_stdin(args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

/// `script` (util-linux), which gives a program a real pseudo-terminal;
/// `None` (a failure under `WSTRACE_REQUIRE_TOOLS`) when it is missing.
fn script() -> Option<std::path::PathBuf> {
    let found = which("script");
    assert!(
        found.is_some() || std::env::var_os("WSTRACE_REQUIRE_TOOLS").is_none(),
        "`script` (util-linux) is not installed"
    );
    found
}

/// `command` run by `sh` in a pseudo-terminal that `script` gives it: its
/// keys are the child's stdin, its screen the child's stdout.
fn in_terminal(script: &std::path::Path, command: &str) -> std::process::Child {
    Command::new(script)
        .args(["-qfec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Types `text` into a terminal one key at a time, as a person does.
fn type_keys(keys: &mut impl Write, text: &str) {
    for key in text.bytes() {
        keys.write_all(&[key]).unwrap();
        keys.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn in_a_terminal_the_client_has_a_prompt_and_prints_frames_above_it() {
    // `script` (util-linux) gives the client a real pseudo-terminal.
    let Some(script) = script() else {
        return eprintln!("skipped: no `script`");
    };
    let server = Wstrace::start(&[]);
    // The shell says when the client has exited: `script` itself waits
    // for its input to end.
    // Twice: the second ends with Ctrl-D.
    let client = format!("{} client {}", env!("CARGO_BIN_EXE_wstrace"), server.url());
    let command = format!("{client}; echo CLIENT-EXIT=$?; {client}; echo CLIENT-EXIT=$?");
    let mut terminal = in_terminal(&script, &command);
    let mut keys = terminal.stdin.take().unwrap();
    let mut screen_pipe = terminal.stdout.take().unwrap();
    let (screen_tx, screen_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut screen_pipe, &mut chunk) {
            let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
            if n == 0 || screen_tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    // Reads the screen until `what` shows after byte `from`; returns where.
    let wait_for_screen = |what: &str, from: usize, screen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = screen[from..].find(what) {
                return from + at;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match screen_rx.recv_timeout(left) {
                Ok(text) => screen.push_str(&text),
                Err(_) => panic!("{what:?} never appeared: {screen:?}"),
            }
        }
    };
    wait_for_screen("> ", 0, &mut screen);
    type_keys(&mut keys, "hello there\r");
    let echo = r#"{"type":"echo","content":"hello there"}"#;
    let at = wait_for_screen(echo, 0, &mut screen);
    // The frame is printed above a fresh prompt, not into the typed line.
    wait_for_screen("> ", at, &mut screen);
    // Two lines pasted at once (a bracketed paste, as terminals send
    // one), then Enter: one frame per line, nothing garbled.
    keys.write_all(b"\x1b[200~pasted one\npasted two\x1b[201~")
        .unwrap();
    keys.flush().unwrap();
    // Enter once the paste is on screen, as a person presses it (a key in
    // the same read as the paste waits for the next key: rustyline 629).
    let at = wait_for_screen("pasted two", at, &mut screen);
    type_keys(&mut keys, "\r");
    let one = wait_for_screen(r#"{"type":"echo","content":"pasted one"}"#, at, &mut screen);
    let at = wait_for_screen(
        r#"{"type":"echo","content":"pasted two"}"#,
        one,
        &mut screen,
    );
    wait_for_screen("> ", at, &mut screen);
    // Ctrl-C at the prompt: a Close first, then exit 130, with its
    // terminal still open.
    type_keys(&mut keys, "\x03");
    let at = wait_for_screen("CLIENT-EXIT=130", at, &mut screen);
    // The second: Ctrl-D at the empty prompt, a Close 1000, exit 0.
    let at = wait_for_screen("> ", at, &mut screen);
    type_keys(&mut keys, "\x04");
    wait_for_screen("CLIENT-EXIT=0", at, &mut screen);
    drop(keys);
    let _ = terminal.wait();
    let closed = closed_lines(server);
    assert_eq!(closed.len(), 2);
    for line in &closed {
        assert_eq!(
            (line["close_code"].as_u64(), line["closed_by"].as_str()),
            (Some(1000), Some("client")),
            "{line}"
        );
    }
}

#[test]
fn in_a_terminal_load_draws_progress_and_finishes_it_at_100_percent() {
    let Some(script) = script() else {
        return eprintln!("skipped: no `script`");
    };
    let server = Wstrace::start(&[]);
    let command = format!(
        "{} load {} -c 2 -m 50 --window 1",
        env!("CARGO_BIN_EXE_wstrace"),
        server.url()
    );
    let mut terminal = in_terminal(&script, &command);
    // Kept open: `script` ends its session when its input ends.
    let _keys = terminal.stdin.take().unwrap();
    let mut screen = String::new();
    std::io::Read::read_to_string(&mut terminal.stdout.take().unwrap(), &mut screen).unwrap();
    assert!(terminal.wait().unwrap().success(), "{screen}");
    // The last drawing of the bar, just before the report.
    let before_report = &screen[..screen.find("scenario").expect("the report")];
    let last = before_report
        .rsplit('\r')
        .find(|s| !s.trim().is_empty())
        .unwrap();
    assert!(last.contains("100%"), "{last:?}");
    assert!(last.contains(&format!("[{}]", "#".repeat(30))), "{last:?}");
}
