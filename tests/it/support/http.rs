//! Minimal HTTP/1.1 plumbing shared by the loopback test servers (recording proxy, IMDS) and a
//! tiny blocking client for the self-tests: message heads, body framing (RFC 9112 §6), verbatim
//! body copying, and a thread-per-connection loopback server that stops cleanly on drop.
//!
//! Only std: the test servers must not depend on the HTTP stack of the code under test.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest message head accepted; real SDK heads are a few KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Copy buffer for bodies.
const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// How long the self-test client waits for any response byte before failing.
const CLIENT_READ_TIMEOUT_SECS: u64 = 30;

/// A request or response head as received: the raw bytes (for verbatim forwarding) and the
/// parsed start line and headers (names lowercased, values trimmed).
#[derive(Debug, Clone)]
pub struct Head {
    pub raw: Vec<u8>,
    pub start_line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (`Connection`, `Transfer-Encoding`, `Expect`) holds a
    /// token, case-insensitively, across all its occurrences.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// `(method, target, version)` of a request line.
    pub fn request_line(&self) -> io::Result<(String, String, String)> {
        let mut it = self.start_line.split(' ');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(m), Some(t), Some(v), None) if !m.is_empty() && v.starts_with("HTTP/") => {
                Ok((m.to_string(), t.to_string(), v.to_string()))
            }
            _ => Err(invalid(format!("bad request line {:?}", self.start_line))),
        }
    }

    /// Status code of a status line.
    pub fn status(&self) -> io::Result<u16> {
        let mut it = self.start_line.splitn(3, ' ');
        match (it.next(), it.next()) {
            (Some(v), Some(code)) if v.starts_with("HTTP/") => code
                .parse()
                .map_err(|_| invalid(format!("bad status line {:?}", self.start_line))),
            _ => Err(invalid(format!("bad status line {:?}", self.start_line))),
        }
    }

    /// The raw head without the hop-by-hop `Connection` and `Keep-Alive` lines, optionally with
    /// `Connection: close` added (RFC 9110 §7.6.1: these describe one hop, so a proxy manages
    /// them per side instead of relaying them).
    pub fn raw_without_connection(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 20);
        // Every head ends with its blank line (CRLF, or a bare LF from a lenient peer).
        let blank = if self.raw.ends_with(b"\r\n\r\n") {
            2
        } else {
            1
        };
        let text = &self.raw[..self.raw.len().saturating_sub(blank)];
        for line in text.split_inclusive(|&b| b == b'\n') {
            let name = line
                .split(|&b| b == b':')
                .next()
                .map(|n| String::from_utf8_lossy(n).trim().to_ascii_lowercase())
                .unwrap_or_default();
            if line.contains(&b':') && (name == "connection" || name == "keep-alive") {
                continue;
            }
            out.extend_from_slice(line);
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

pub fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one message head. `Ok(None)` on a clean end of stream before its first byte (the
/// peer closed an idle keep-alive connection).
pub fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r
            .by_ref()
            .take(MAX_HEAD_BYTES as u64)
            .read_until(b'\n', &mut raw)?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream inside a message head",
            ));
        }
        if raw.len() > MAX_HEAD_BYTES {
            return Err(invalid("message head too long".into()));
        }
        let line = &raw[before..];
        // RFC 9112 §2.2: a server should ignore empty lines before the request line.
        if before == 0 && (line == b"\r\n" || line == b"\n") {
            raw.clear();
            continue;
        }
        if before > 0 && (line == b"\r\n" || line == b"\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let start_line = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some(Head {
        raw,
        start_line,
        headers,
    }))
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn content_length(head: &Head) -> io::Result<Option<u64>> {
    head.header("content-length")
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(format!("bad content-length {v:?}")))
        })
        .transpose()
}

/// Framing of a request body: chunked, a length, or none (a request never reads to close).
pub fn request_framing(head: &Head) -> io::Result<Framing> {
    if head.has_token("transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    Ok(match content_length(head)? {
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// Framing of a response body, which also depends on the request method and the status.
pub fn response_framing(method: &str, status: u16, head: &Head) -> io::Result<Framing> {
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    if head.has_token("transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    Ok(match content_length(head)? {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Copies a body from `r` to `w` exactly as framed on the wire (chunk-size lines, extensions
/// and trailers included), passing the decoded payload to `payload`. Returns the payload length.
pub fn copy_body(
    r: &mut impl BufRead,
    w: &mut impl Write,
    framing: Framing,
    payload: &mut dyn FnMut(&[u8]),
) -> io::Result<u64> {
    match framing {
        Framing::Empty => Ok(0),
        Framing::Length(n) => copy_exact(r, w, n, payload),
        Framing::UntilClose => copy_exact(r, w, u64::MAX, payload),
        Framing::Chunked => {
            let mut total = 0;
            loop {
                let mut line = Vec::new();
                r.by_ref().take(4096).read_until(b'\n', &mut line)?;
                if !line.ends_with(b"\n") {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of stream inside a chunk-size line",
                    ));
                }
                w.write_all(&line)?;
                let text = String::from_utf8_lossy(&line);
                let size_text = text.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(size_text, 16)
                    .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
                if size == 0 {
                    // Trailer section, then the final blank line.
                    loop {
                        let mut t = Vec::new();
                        r.by_ref().take(4096).read_until(b'\n', &mut t)?;
                        if !t.ends_with(b"\n") {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "end of stream inside chunked trailers",
                            ));
                        }
                        w.write_all(&t)?;
                        if t == b"\r\n" || t == b"\n" {
                            return Ok(total);
                        }
                    }
                }
                total += copy_exact(r, w, size, payload)?;
                let mut crlf = Vec::new();
                r.by_ref().take(2).read_until(b'\n', &mut crlf)?;
                if crlf != b"\r\n" && crlf != b"\n" {
                    return Err(invalid("chunk data not followed by CRLF".into()));
                }
                w.write_all(&crlf)?;
            }
        }
    }
}

/// Copies `n` bytes (or up to end of stream when `n` is `u64::MAX`).
fn copy_exact(
    r: &mut impl BufRead,
    w: &mut impl Write,
    n: u64,
    payload: &mut dyn FnMut(&[u8]),
) -> io::Result<u64> {
    let mut left = n;
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    let mut total = 0;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let got = r.read(&mut buf[..want])?;
        if got == 0 {
            if n == u64::MAX {
                break;
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("end of stream after {total} of {n} body bytes"),
            ));
        }
        w.write_all(&buf[..got])?;
        payload(&buf[..got]);
        total += got as u64;
        left -= got as u64;
    }
    Ok(total)
}

/// Writes a complete response with a `Content-Length` body.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    w.write_all(&bytes)?;
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `http://127.0.0.1:P` or `127.0.0.1:P` → `127.0.0.1:P`.
pub fn authority(endpoint: &str) -> &str {
    let rest = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    rest.split('/').next().unwrap_or(rest)
}

/// Open connections of a [`LoopbackServer`]: socket clones to shut down on stop (which unblocks
/// their threads' reads) and the threads to join.
#[derive(Default)]
pub struct Conns {
    streams: Mutex<HashMap<u64, Vec<TcpStream>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop: AtomicBool,
}

impl Conns {
    /// Registers a socket (client or upstream) of connection `id` to be shut down when the
    /// server stops.
    pub fn track(&self, id: u64, s: &TcpStream) {
        if let Ok(clone) = s.try_clone() {
            if self.stopping() {
                let _ = clone.shutdown(Shutdown::Both);
            }
            lock(&self.streams).entry(id).or_default().push(clone);
        }
    }

    /// Drops the clones of connection `id` once its thread is done, so that its sockets really
    /// close (with a reset if unread input remains) instead of lingering until the server stops.
    fn release(&self, id: u64) {
        lock(&self.streams).remove(&id);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, returning early (false) when the server stops.
    pub fn sleep(&self, d: Duration) -> bool {
        let step = Duration::from_millis(10);
        let end = Instant::now() + d;
        loop {
            if self.stopping() {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(step.min(left));
        }
    }
}

/// Locks a mutex, ignoring poisoning: a panicking connection thread must not hide the records
/// from the test that inspects them.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-connection handler of a [`LoopbackServer`].
pub type Handler = Arc<dyn Fn(TcpStream, u64, &Arc<Conns>) + Send + Sync>;

/// A TCP server on a free 127.0.0.1 port running `handler` on a thread per connection.
/// Dropping it stops accepting (by connecting to itself to wake the blocking `accept`), shuts
/// every tracked socket down and joins every thread, so no thread outlives it.
pub struct LoopbackServer {
    pub addr: String,
    conns: Arc<Conns>,
    acceptor: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    pub fn start(handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address").to_string();
        let conns = Arc::new(Conns::default());
        let c = conns.clone();
        let acceptor = std::thread::spawn(move || {
            let mut next_id = 0u64;
            for stream in listener.incoming() {
                if c.stopping() {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                next_id += 1;
                c.track(next_id, &stream);
                let (h, cc, id) = (handler.clone(), c.clone(), next_id);
                let t = std::thread::spawn(move || {
                    h(stream, id, &cc);
                    cc.release(id);
                });
                lock(&c.threads).push(t);
            }
        });
        Self {
            addr,
            conns,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.conns.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in lock(&self.conns.streams).values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.conns.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A request body for [`HttpClient::request`].
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    None,
    /// Sent with `Content-Length`.
    Bytes(&'a [u8]),
    /// Sent with `Transfer-Encoding: chunked`, in chunks of at most the given size.
    Chunked(&'a [u8], usize),
}

/// A response read by [`HttpClient`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Status codes of the interim (1xx) responses that preceded it.
    pub interim: Vec<u16>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A tiny blocking HTTP/1.1 client on one keep-alive connection, for the self-tests.
pub struct HttpClient {
    authority: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpClient {
    /// Connects to `http://host:port` (or `host:port`).
    pub fn connect(endpoint: &str) -> io::Result<Self> {
        let authority = authority(endpoint).to_string();
        let stream = TcpStream::connect(&authority)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(CLIENT_READ_TIMEOUT_SECS)))?;
        Ok(Self {
            authority,
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response. Adds `Host` and the body framing header.
    /// With an `Expect: 100-continue` header it waits (up to a second, like curl) for the
    /// interim response before sending the body, and sends no body if a final one comes first.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> io::Result<Response> {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.authority);
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        match body {
            Body::None => {}
            Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
            Body::Chunked(..) => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        head.push_str("\r\n");
        self.writer.write_all(head.as_bytes())?;

        let mut interim = Vec::new();
        let expect = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue")
        });
        if expect && !matches!(body, Body::None) {
            self.reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(1)))?;
            let waited = self.reader.fill_buf().map(|b| !b.is_empty());
            self.reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(CLIENT_READ_TIMEOUT_SECS)))?;
            match waited {
                Ok(true) => {
                    let h = read_head(&mut self.reader)?.ok_or_else(eof)?;
                    let status = h.status()?;
                    if !(100..200).contains(&status) {
                        return self.finish(method, h, interim);
                    }
                    interim.push(status);
                }
                Ok(false) => return Err(eof()),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
        match body {
            Body::None => {}
            Body::Bytes(b) => self.writer.write_all(b)?,
            Body::Chunked(b, size) => {
                for chunk in b.chunks(size.max(1)) {
                    let mut out = format!("{:x}\r\n", chunk.len()).into_bytes();
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                    self.writer.write_all(&out)?;
                }
                self.writer.write_all(b"0\r\n\r\n")?;
            }
        }
        loop {
            let h = read_head(&mut self.reader)?.ok_or_else(eof)?;
            let status = h.status()?;
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            return self.finish(method, h, interim);
        }
    }

    fn finish(&mut self, method: &str, h: Head, interim: Vec<u16>) -> io::Result<Response> {
        let status = h.status()?;
        let framing = response_framing(method, status, &h)?;
        let mut body = Vec::new();
        copy_body(&mut self.reader, &mut io::sink(), framing, &mut |b| {
            body.extend_from_slice(b)
        })?;
        Ok(Response {
            status,
            headers: h.headers,
            body,
            interim,
        })
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed before a response",
    )
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One request on a fresh connection.
pub fn request(
    endpoint: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
) -> io::Result<Response> {
    HttpClient::connect(endpoint)?.request(method, target, headers, body)
}
