//! `wstrace client URL`: an interactive terminal client, and a
//! non-interactive mode for scripts and tests.
//!
//! Exit codes: 0 ok; 2 could not connect (or the upgrade was refused);
//! 3 timed out before `--expect` frames arrived; 4 the server closed the
//! session first; 5 the server answered with an `error` frame (with
//! `--send`); 64 bad usage (a bad flag or URL); 130 interrupted (Ctrl-C,
//! after sending a Close).
//!
//! The client ends its sessions with 1000 (Normal Closure): after `/quit`,
//! at the end of input (Ctrl-D) or of `--send`, on `--timeout` and on
//! Ctrl-C; and it answers a Close the server sends (a kick, a shutdown), so
//! every session it ends closes cleanly. When input is piped, it waits for
//! the replies before closing.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::protocol::ClientFrame;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws
    pub url: String,
    /// Continue this W3C traceparent.
    #[arg(long, env = "WSTRACE_CLIENT_TRACEPARENT")]
    pub traceparent: Option<String>,
    /// JWT, sent as `Authorization: Bearer`.
    #[arg(long, env = "WSTRACE_CLIENT_TOKEN", hide_env_values = true)]
    pub token: Option<crate::auth::Secret>,
    /// Extra header `Name: value` (repeatable).
    #[arg(long = "header", env = "WSTRACE_CLIENT_HEADER", value_delimiter = '\n')]
    pub headers: Vec<String>,
    /// Send this input line (same syntax as interactive input) and do not
    /// read stdin (repeatable).
    #[arg(long = "send", env = "WSTRACE_CLIENT_SEND", value_delimiter = '\n')]
    pub send: Vec<String>,
    /// With --send: wait for this many frames after the welcome, then exit.
    #[arg(long, env = "WSTRACE_CLIENT_EXPECT", default_value_t = 0)]
    pub expect: usize,
    /// With --send: give up after this long.
    #[arg(long, env = "WSTRACE_CLIENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// A PEM file of CA certificates to trust for wss://, beside the
    /// system's.
    #[arg(long, env = "WSTRACE_CLIENT_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
}

pub const EXIT_CONNECT: u8 = 2;
pub const EXIT_TIMEOUT: u8 = 3;
pub const EXIT_CLOSED: u8 = 4;
pub const EXIT_ERROR_FRAME: u8 = 5;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_INTERRUPTED: u8 = 130;

/// With piped input: after the last line, how long the client waits for
/// more frames before it closes (at most `--timeout` in all).
const PIPED_QUIET: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out: {got} of {want} frames")]
    Timeout { got: usize, want: usize },
    #[error("the server closed the session: {0}")]
    Closed(String),
    #[error("the server answered with {0} error frame(s)")]
    ErrorFrames(usize),
    #[error("{0}")]
    Usage(String),
    #[error("interrupted")]
    Interrupted,
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Connect(_) => EXIT_CONNECT,
            ClientError::Timeout { .. } => EXIT_TIMEOUT,
            ClientError::Closed(_) => EXIT_CLOSED,
            ClientError::ErrorFrames(_) => EXIT_ERROR_FRAME,
            ClientError::Usage(_) => EXIT_USAGE,
            ClientError::Interrupted => EXIT_INTERRUPTED,
        }
    }
}

const HELP: &str = "\
text          echo TEXT
/sub CH       subscribe to channel CH
/unsub CH     unsubscribe
/pub CH TEXT  publish TEXT on CH
/dm ID TEXT   direct message to session ID
/ping         application ping, prints the round trip
/json {...}   send a JSON frame (checked)
/raw TEXT     send TEXT as a text frame, unchecked
/help         this help
/quit         close the session and exit";

/// What an input line becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Frame(Value),
    /// Sent as it is, not checked: to test what the server does with it.
    Raw(String),
    Ping,
    Help,
    Quit,
}

pub fn parse_input(line: &str) -> Result<Input, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let need = |what: &str| format!("usage: {command} {what}");
    let frame = match command {
        "/quit" => return Ok(Input::Quit),
        "/help" => return Ok(Input::Help),
        "/ping" => return Ok(Input::Ping),
        "/raw" => return Ok(Input::Raw(rest.into())),
        "/sub" if !rest.is_empty() => ClientFrame::Subscribe {
            channel: rest.into(),
        },
        "/unsub" if !rest.is_empty() => ClientFrame::Unsubscribe {
            channel: rest.into(),
        },
        "/pub" => {
            let (channel, text) = rest.split_once(' ').ok_or_else(|| need("CH TEXT"))?;
            ClientFrame::Publish {
                channel: channel.into(),
                content: text.into(),
            }
        }
        "/dm" => {
            let (to, text) = rest.split_once(' ').ok_or_else(|| need("ID TEXT"))?;
            ClientFrame::Direct {
                to_session: Some(to.into()),
                to_user: None,
                content: text.into(),
            }
        }
        "/json" => {
            let raw = serde_json::from_str(rest).map_err(|e| format!("bad JSON: {e}"))?;
            return Ok(Input::Frame(raw));
        }
        "/sub" | "/unsub" => return Err(need("CH")),
        c if c.starts_with('/') => return Err(format!("unknown command {c}; /help lists them")),
        _ => ClientFrame::Echo {
            content: line.into(),
        },
    };
    // Client frames are strings and options: they always serialize.
    Ok(Input::Frame(
        serde_json::to_value(&frame).unwrap_or(Value::Null),
    ))
}

fn stamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .get(11..23)
        .unwrap_or("")
        .to_owned()
}

/// What the input side hands the session loop.
enum Typed {
    Line(String),
    /// Ctrl-C at the prompt (the line editor reads it as a key).
    Interrupted,
}

/// Where received frames are printed: stdout, or above the line editor's
/// prompt so they never break into a half-typed line.
enum Output {
    Stdout,
    AbovePrompt(Box<dyn rustyline::ExternalPrinter + Send>),
}

impl Output {
    fn line(&mut self, text: String) {
        match self {
            Output::Stdout => println!("{text}"),
            Output::AbovePrompt(printer) => {
                if let Err(text) = printer.print(text.clone()).map_err(|_| text) {
                    println!("{text}");
                }
            }
        }
    }
}

/// Lines from a pipe or a file, on a plain thread rather than the runtime's
/// blocking pool: a read still waiting on its input must not keep the
/// process alive once the session is over.
fn read_plain_lines(lines: tokio::sync::mpsc::Sender<Typed>) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.blocking_send(Typed::Line(line)).is_err() {
                break;
            }
        }
    });
}

/// The terminal's line editor: a `> ` prompt with history (up and down
/// arrows), on its own thread, with received frames printed above it.
///
/// Pasted text arrives as one edit (bracketed paste, rustyline's default),
/// newlines and all; Enter then sends it one frame per line. (Without
/// bracketed paste, rustyline issues 629 and 976: when several keys arrive
/// in one read the line is handed over only at the next key.)
///
/// The terminal's settings are saved first and put back when the client
/// exits (`restore_terminal`): the session can end while the editor holds
/// the terminal in raw mode.
struct LineEditor;

impl LineEditor {
    fn start(
        lines: tokio::sync::mpsc::Sender<Typed>,
    ) -> Option<Box<dyn rustyline::ExternalPrinter + Send>> {
        use rustyline::error::ReadlineError;
        save_terminal();
        let mut editor = rustyline::DefaultEditor::new().ok()?;
        let printer = editor.create_external_printer().ok()?;
        std::thread::spawn(move || {
            loop {
                let typed = match editor.readline("> ") {
                    Ok(line) => {
                        let _ = editor.add_history_entry(line.as_str());
                        line
                    }
                    Err(ReadlineError::Interrupted) => {
                        let _ = lines.blocking_send(Typed::Interrupted);
                        break;
                    }
                    // Ctrl-D at an empty prompt, or the terminal went away:
                    // the input has ended (the session closes with 1000).
                    Err(_) => break,
                };
                // Pasted lines (bracketed paste keeps their newlines in one
                // edit) are sent one frame per line, as piped lines are.
                for line in typed.split(['\n', '\r']).filter(|l| !l.is_empty()) {
                    if lines.blocking_send(Typed::Line(line.to_owned())).is_err() {
                        return;
                    }
                }
            }
        });
        Some(Box::new(printer))
    }
}

static SAVED_TERMINAL: std::sync::Mutex<Option<libc::termios>> = std::sync::Mutex::new(None);

fn save_terminal() {
    // SAFETY: tcgetattr only writes the struct it is given.
    unsafe {
        let mut settings: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut settings) == 0 {
            *SAVED_TERMINAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(settings);
        }
    }
}

/// Puts the terminal back as it was before the line editor, if it ran.
pub fn restore_terminal() {
    if let Some(settings) = SAVED_TERMINAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        // SAFETY: tcsetattr only reads the struct it is given.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &settings);
        }
    }
}

/// The URL must be a WebSocket URL with a host: say so before trying.
fn check_url(url: &str) -> Result<(), ClientError> {
    let invalid = |why: &str| {
        ClientError::Usage(format!(
            "invalid URL {url:?}: {why} (for example ws://127.0.0.1:8080/ws)"
        ))
    };
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        url.parse().map_err(|_| invalid("not a URL"))?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        Some(other) => return Err(invalid(&format!("the scheme is {other}, not ws or wss"))),
        None => return Err(invalid("it needs ws:// or wss://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(())
}

/// The Close the client ends a session with.
fn normal_close(reason: &str) -> Message {
    Message::Close(Some(super::normal_close(reason)))
}

pub async fn run(args: ClientArgs) -> Result<(), ClientError> {
    check_url(&args.url)?;
    let (ws, header_trace) = connect(&args).await?;
    let (mut tx, mut rx) = ws.split();
    let mut pings: HashMap<String, Instant> = HashMap::new();
    let mut next_ping = 0u64;

    print_welcome(&mut rx, args.timeout, &header_trace).await?;

    let Terminal {
        interactive,
        piped,
        color,
        mut lines,
        mut out,
    } = start_input(&args).await;

    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut received = 0usize;
    let mut error_frames = 0usize;
    let mut sent = 0usize;
    let mut input_open = true;
    // Piped input that has ended: close after a quiet spell, or once every
    // frame sent has had an answer.
    let mut quiet_until: Option<tokio::time::Instant> = None;
    let mut drain_deadline = deadline;
    let interrupted = tokio::signal::ctrl_c();
    let mut interrupted = std::pin::pin!(interrupted);
    loop {
        if !interactive && received >= args.expect && !input_open {
            break;
        }
        if piped && !input_open && received >= sent {
            break;
        }
        tokio::select! {
            _ = &mut interrupted => {
                close_normally(&mut tx, &mut rx, "interrupted", Duration::from_secs(1)).await;
                return Err(ClientError::Interrupted);
            }
            _ = tokio::time::sleep_until(quiet_until.unwrap_or(deadline)), if quiet_until.is_some() => break,
            line = lines.recv(), if input_open => {
                if let Some(Typed::Interrupted) = line {
                    let _ = tx.send(normal_close("interrupted")).await;
                    return Err(ClientError::Interrupted);
                }
                let Some(Typed::Line(line)) = line else {
                    input_open = false;
                    if piped {
                        let now = tokio::time::Instant::now();
                        drain_deadline = now + args.timeout;
                        quiet_until = Some(now + PIPED_QUIET);
                        continue;
                    }
                    if interactive { break; }
                    continue;
                };
                let text = match parse_input(&line) {
                    Ok(Input::Quit) => break,
                    Ok(Input::Help) => { out.line(HELP.to_owned()); continue; }
                    Ok(Input::Ping) => {
                        next_ping += 1;
                        let id = format!("p{next_ping}");
                        pings.insert(id.clone(), Instant::now());
                        serde_json::to_value(ClientFrame::Ping { id: Some(id) })
                            .unwrap_or(Value::Null)
                            .to_string()
                    }
                    Ok(Input::Frame(frame)) => frame.to_string(),
                    Ok(Input::Raw(text)) => text,
                    Err(message) if interactive => { out.line(message); continue; }
                    Err(message) => return Err(ClientError::Usage(message)),
                };
                if tx.send(Message::Text(text.into())).await.is_err() {
                    return Err(ClientError::Closed("send failed".into()));
                }
                sent += 1;
            }
            frame = rx.next() => match show_frame(frame, &mut out, &mut pings, color) {
                Err(closed) => {
                    // The server's Close is answered (tungstenite queued the
                    // reply; flushing sends it), so the session ends cleanly.
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
                    return Err(closed);
                }
                Ok(Shown::Text { error }) => {
                    received += 1;
                    error_frames += usize::from(error);
                    if let Some(quiet) = &mut quiet_until {
                        *quiet = (tokio::time::Instant::now() + PIPED_QUIET).min(drain_deadline);
                    }
                }
                Ok(Shown::Binary) => received += 1,
                Ok(Shown::Nothing) => {}
            },
            _ = tokio::time::sleep_until(deadline), if !interactive => {
                close_normally(&mut tx, &mut rx, "timeout", Duration::from_secs(1)).await;
                return Err(ClientError::Timeout { got: received, want: args.expect });
            }
        }
    }
    close_normally(&mut tx, &mut rx, "", Duration::from_secs(2)).await;
    match error_frames {
        // With --send the exit code says whether the server objected.
        n if n > 0 && !interactive => Err(ClientError::ErrorFrames(n)),
        _ => Ok(()),
    }
}

/// The upgrade request: the URL, with `--traceparent`, `--token` and each
/// `--header`.
fn upgrade_request(
    args: &ClientArgs,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ClientError> {
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Usage(format!("invalid URL {:?}: {e}", args.url)))?;
    let headers = request.headers_mut();
    // Names the tool in the server's `GET /ws` span and access lines (a
    // `--header 'User-Agent: …'` replaces it).
    headers.insert(
        "user-agent",
        concat!("wstrace-client/", env!("CARGO_PKG_VERSION"))
            .parse()
            .expect("a valid header value"),
    );
    if let Some(tp) = &args.traceparent {
        headers.insert(
            "traceparent",
            tp.parse()
                .map_err(|_| ClientError::Usage("bad --traceparent".into()))?,
        );
    }
    if let Some(token) = &args.token {
        let value = format!("Bearer {}", token.expose());
        headers.insert(
            "authorization",
            value
                .parse()
                .map_err(|_| ClientError::Usage("bad --token".into()))?,
        );
    }
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| ClientError::Usage(format!("--header needs `Name: value`: {header}")))?;
        let name: tokio_tungstenite::tungstenite::http::HeaderName = name
            .trim()
            .parse()
            .map_err(|_| ClientError::Usage(format!("bad header name {name}")))?;
        headers.insert(
            name,
            value
                .trim()
                .parse()
                .map_err(|_| ClientError::Usage("bad header value".into()))?,
        );
    }
    Ok(request)
}

/// Connects, or says why not (a refused upgrade with its status and body).
async fn connect(
    args: &ClientArgs,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        String,
    ),
    ClientError,
> {
    let request = upgrade_request(args)?;
    let trust = super::tls::Trust::new(args.ca_cert.as_deref()).map_err(ClientError::Usage)?;
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(trust.websocket()),
    );
    let (ws, response) = tokio::time::timeout(args.timeout, connect)
        .await
        .map_err(|_| ClientError::Connect("no answer in time".into()))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => ClientError::Connect(format!(
                "upgrade refused with HTTP {}: {}",
                r.status(),
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
            )),
            other => ClientError::Connect(other.to_string()),
        })?;
    let header_trace = response
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((ws, header_trace))
}

/// The welcome frame names the session; its line is the client's banner.
async fn print_welcome<S>(
    rx: &mut S,
    timeout: Duration,
    header_trace: &str,
) -> Result<(), ClientError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let welcome = tokio::time::timeout(timeout, rx.next()).await;
    match welcome {
        Ok(Some(Ok(Message::Text(text)))) => {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            println!(
                "connected session_id={} trace_id={} instance_id={}",
                v["session_id"].as_str().unwrap_or("?"),
                v["trace_id"].as_str().unwrap_or(header_trace),
                v["instance_id"].as_str().unwrap_or("?")
            );
        }
        _ => return Err(ClientError::Closed("no welcome frame".into())),
    }

    Ok(())
}

/// Where the client's lines come from and how its output is shown.
struct Terminal {
    /// No `--send`: lines come from the terminal or a pipe.
    interactive: bool,
    /// Input from a pipe or file: its replies are waited for at its end.
    piped: bool,
    color: bool,
    lines: tokio::sync::mpsc::Receiver<Typed>,
    out: Output,
}

async fn start_input(args: &ClientArgs) -> Terminal {
    use std::io::IsTerminal;
    let interactive = args.send.is_empty();
    // Input from a pipe or file: its replies are waited for at its end.
    let piped = interactive && !std::io::stdin().is_terminal();
    let color = std::io::stdout().is_terminal();
    let (lines_tx, lines) = tokio::sync::mpsc::channel::<Typed>(16);
    let mut out = Output::Stdout;
    if interactive && !piped {
        eprintln!("type /help for commands");
        match LineEditor::start(lines_tx.clone()) {
            Some(printer) => out = Output::AbovePrompt(printer),
            None => read_plain_lines(lines_tx),
        }
    } else if interactive {
        read_plain_lines(lines_tx);
    } else {
        for line in args.send.clone() {
            let _ = lines_tx.send(Typed::Line(line)).await;
        }
        drop(lines_tx);
    }

    Terminal {
        interactive,
        piped,
        color,
        lines,
        out,
    }
}

/// Sends a Close 1000 and lets the close handshake finish, briefly.
async fn close_normally<T, R>(tx: &mut T, rx: &mut R, reason: &str, wait: Duration)
where
    T: futures_util::Sink<Message> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let _ = tx.send(normal_close(reason)).await;
    let _ = tokio::time::timeout(wait, async { while let Some(Ok(_)) = rx.next().await {} }).await;
}

/// What [`show_frame`] showed.
enum Shown {
    /// A text frame; `error` if it was an `error` frame.
    Text {
        error: bool,
    },
    Binary,
    /// A control frame: not shown, not counted.
    Nothing,
}

/// Shows one data frame from the server; a close or a broken connection
/// ends the client with why.
fn show_frame(
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    out: &mut Output,
    pings: &mut HashMap<String, Instant>,
    color: bool,
) -> Result<Shown, ClientError> {
    match frame {
        Some(Ok(Message::Text(text))) => {
            let (line, error) = show_text(&text, pings, color);
            out.line(line);
            Ok(Shown::Text { error })
        }
        Some(Ok(Message::Binary(bytes))) => {
            out.line(format!("[{}] < binary {} bytes", stamp(), bytes.len()));
            Ok(Shown::Binary)
        }
        Some(Ok(Message::Close(frame))) => {
            let why = frame
                .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                .unwrap_or_default();
            out.line(format!("[{}] closed by server: {why}", stamp()));
            Err(ClientError::Closed(why))
        }
        Some(Ok(_)) => Ok(Shown::Nothing),
        Some(Err(e)) => Err(ClientError::Closed(e.to_string())),
        None => Err(ClientError::Closed("connection ended".into())),
    }
}

/// One text frame from the server as a line (a pong with its round-trip
/// time, an error in red in a terminal), and whether it is an error.
fn show_text(text: &str, pings: &mut HashMap<String, Instant>, color: bool) -> (String, bool) {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let rtt = v["id"].as_str().and_then(|id| pings.remove(id));
    let line = match rtt {
        Some(sent) if v["type"] == "pong" => format!(
            "[{}] < {text}  rtt={:.3}ms",
            stamp(),
            sent.elapsed().as_secs_f64() * 1e3
        ),
        _ if color && v["type"] == "error" => format!("[{}] < \x1b[31m{text}\x1b[0m", stamp()),
        _ => format!("[{}] < {text}", stamp()),
    };
    (line, v["type"] == "error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_lines_become_frames() {
        assert_eq!(
            parse_input("hello").unwrap(),
            Input::Frame(json!({"type": "echo", "content": "hello"}))
        );
        assert_eq!(
            parse_input("/sub room").unwrap(),
            Input::Frame(json!({"type": "subscribe", "channel": "room"}))
        );
        assert_eq!(
            parse_input("/pub room hi there").unwrap(),
            Input::Frame(json!({"type": "publish", "channel": "room", "content": "hi there"}))
        );
        assert_eq!(
            parse_input("/dm abc psst").unwrap(),
            Input::Frame(json!({"type": "direct", "to_session": "abc", "content": "psst"}))
        );
        assert_eq!(
            parse_input("/json {\"type\":\"ping\"}").unwrap(),
            Input::Frame(json!({"type": "ping"}))
        );
        assert_eq!(parse_input("/ping").unwrap(), Input::Ping);
        assert_eq!(parse_input("/quit").unwrap(), Input::Quit);
        assert!(parse_input("/pub room").is_err());
        assert!(parse_input("/nope").is_err());
        assert!(parse_input("/json {").is_err());
    }
}
