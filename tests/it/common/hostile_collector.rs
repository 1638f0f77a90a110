//! A hostile OTLP/HTTP peer on loopback: not a collector (rotel is the
//! real one, in `child.rs`) but the answers a broken or malicious one
//! gives, to see what the exporter does with them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// This status, an empty body, and the connection kept.
    Status(u16),
    /// 200 with a chunked body that never ends.
    EndlessBody,
}

pub struct HostileCollector {
    pub port: u16,
    /// Requests whose head was read.
    pub requests: Arc<AtomicU64>,
    /// Body bytes the exporter took from us.
    pub bytes_sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl HostileCollector {
    pub fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let collector = Self {
            port,
            requests: Arc::default(),
            bytes_sent: Arc::default(),
            stop: Arc::default(),
        };
        let (requests, sent, stop) = (
            collector.requests.clone(),
            collector.bytes_sent.clone(),
            collector.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (requests, sent, stop) = (requests.clone(), sent.clone(), stop.clone());
                std::thread::spawn(move || serve(stream, answer, &requests, &sent, &stop));
            }
        });
        collector
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HostileCollector {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    mut stream: TcpStream,
    answer: Answer,
    requests: &AtomicU64,
    sent: &AtomicU64,
    stop: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    while !stop.load(Relaxed) {
        let Some(body_len) = read_head(&mut stream) else {
            return;
        };
        let mut body = vec![0; body_len];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Relaxed);
        match answer {
            Answer::Status(status) => {
                let head = format!(
                    "HTTP/1.1 {status} Hostile\r\ncontent-type: application/x-protobuf\r\n\
                     content-length: 0\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
            }
            Answer::EndlessBody => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "\0".repeat(64 * 1024));
                while !stop.load(Relaxed) {
                    if stream.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                    sent.fetch_add(64 * 1024, Relaxed);
                }
                return;
            }
        }
    }
}

/// Reads a request head; returns its `content-length`.
fn read_head(stream: &mut TcpStream) -> Option<usize> {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    head.lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|len| len.trim().parse().ok())
}
