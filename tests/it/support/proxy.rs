//! A recording HTTP/1.1 reverse proxy on 127.0.0.1 for the cloud tests: sits between amibundle
//! and the emulator, forwards every request and response byte for byte (bodies streamed,
//! `Content-Length` or chunked in either direction, `Expect: 100-continue` relayed), records each
//! exchange for assertions, and can inject faults chosen per request by a [`FaultPlan`].
//!
//! Connection handling: one thread per client connection, which keeps its client connection
//! alive across requests and uses one upstream connection at a time. `Connection` and
//! `Keep-Alive` are hop-by-hop headers (RFC 9110 §7.6.1), so the proxy manages them per side
//! instead of relaying them: moto's Werkzeug server answers every response with
//! `Connection: close` (it cannot drain request streams itself), and relaying that would defeat
//! the client's connection reuse that the SDK relies on. When the upstream closes, the proxy
//! reconnects for the client's next request. Everything else, request head included (the
//! `Host` header is signed by SigV4), is forwarded unchanged.
//!
//! A [`NetModel`] makes the proxy behave like a network to a distant store: a time to first
//! byte per exchange and bandwidth caps per connection and over all connections (token buckets,
//! each direction on its own). The benchmark scripts run it as a process
//! (`tools/netproxy`, which includes this file), without recording.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::sha::Sha256;

use super::http::{
    Conns, Framing, Head, LoopbackServer, copy_body, is_timeout, lock, read_head, request_framing,
    response_framing, write_response,
};

/// How long the proxy waits for the upstream's `100 Continue` before sending the body anyway
/// (curl's default; RFC 9110 §10.1.1 lets a client stop waiting).
const EXPECT_WAIT_SECS: u64 = 1;
/// How long a closing connection keeps reading (and discarding) what the client still sends,
/// so that the response it was given is not destroyed by a reset (RFC 9112 §9.6).
const LINGER_SECS: u64 = 1;

/// What a [`FaultPlan`] sees of a request before deciding: its head only (the body has not
/// been read yet).
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Position of the request among all requests the proxy received, from 1.
    pub seq: u64,
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string without `?` (empty when none).
    pub query: String,
    /// Request headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// What the proxy does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward to the upstream and relay the response.
    Forward,
    /// Answer with this status and body (XML content type when it starts with `<`), without
    /// contacting the upstream. The request body is read and discarded first unless the client
    /// waits for `100 Continue`, in which case the connection is closed after the response.
    Respond(u16, Vec<u8>),
    /// Like [`Action::Respond`], with these response headers (`Content-Length` is added): an
    /// answer whose meaning is in its headers, like EBS's GetSnapshotBlock.
    RespondWith(u16, Vec<(String, String)>, Vec<u8>),
    /// Close the client connection without any response, leaving the request body unread (so
    /// the close is a TCP reset when body bytes have arrived, else an orderly close).
    ResetConnection,
    /// Wait this long (cut short when the proxy stops), then forward. Recorded when the stall
    /// begins, so a client that gave up on it still finds it in [`RecordingProxy::exchanges`].
    Stall(Duration),
    /// Forward, relay the response head and half of a `Content-Length` body, then wait this
    /// long (cut short when the proxy stops) before relaying the rest: a body that stalls
    /// midway, after the client has its response head.
    StallBody(Duration),
    /// Forward, then relay the response head and only half of a `Content-Length` body (half of
    /// the head when the body is empty or not length-delimited), then close the connection.
    TruncateResponse,
}

/// Chooses the [`Action`] for each request; implemented by closures too. Plans that count
/// requests keep their state behind atomics or a mutex (`decide` takes `&self`, and requests
/// on different connections are decided concurrently).
pub trait FaultPlan: Send + Sync {
    fn decide(&self, req: &RequestHead) -> Action;
}

impl<F> FaultPlan for F
where
    F: Fn(&RequestHead) -> Action + Send + Sync,
{
    fn decide(&self, req: &RequestHead) -> Action {
        self(req)
    }
}

/// The plan of [`RecordingProxy::start`]: forward everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardAll;

impl FaultPlan for ForwardAll {
    fn decide(&self, _: &RequestHead) -> Action {
        Action::Forward
    }
}

/// One recorded request/response exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Position among all requests the proxy received, from 1 (same as [`RequestHead::seq`]).
    pub seq: u64,
    /// Which client connection carried it, from 1: equal for requests on one kept-alive
    /// connection.
    pub conn: u64,
    pub method: String,
    /// Path without the query, as sent (still percent-encoded).
    pub path: String,
    /// The query string without `?` (empty when none).
    pub query: String,
    /// Request headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Length of the request payload after removing any chunked transfer coding (an
    /// `aws-chunked` content coding, with its signatures, is still included).
    pub body_len: u64,
    /// SHA-256 of that payload, lowercase hex.
    pub body_sha256_hex: String,
    /// The first [`BODY_CAPTURE_BYTES`] of that payload (EC2's Query API sends its parameters
    /// in the body).
    pub body_head: Vec<u8>,
    /// Status of the final response sent to the client; 0 when none was sent.
    pub status: u16,
    /// Headers of that response as the upstream (or the fault) gave them, names lowercased.
    pub response_headers: Vec<(String, String)>,
    /// The injected fault, for anything but [`Action::Forward`].
    pub fault: Option<String>,
    /// What went wrong inside the proxy (upstream unreachable, a peer closed mid-message).
    pub error: Option<String>,
}

impl Exchange {
    /// First value of a request header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// A network between the client and the upstream, applied by the proxy to every forwarded
/// exchange (the default is none: loopback speed).
///
/// * `latency`: the response's first byte reaches the client no sooner than this after the
///   request's last byte was passed upstream: the store's time to first byte (its own
///   processing included, so the emulator's time counts towards it rather than on top). An
///   interim `100 Continue` is relayed at once (a network round trip, not the store's work).
/// * `conn_bytes_per_sec`: each client connection's bandwidth, in each direction.
/// * `total_bytes_per_sec`: all connections together, in each direction.
///
/// Bodies are paced in the proxy's copy chunks (at most 64 KiB); message heads are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NetModel {
    pub latency: Duration,
    pub conn_bytes_per_sec: Option<f64>,
    pub total_bytes_per_sec: Option<f64>,
}

/// How long a link may have been idle and still count from where it was: a token bucket this
/// many seconds deep, so that the small gaps of a copy loop do not slow a link down.
const PACER_SLACK: Duration = Duration::from_millis(5);

/// A token bucket kept as the time its link is next free: a chunk of `n` bytes occupies it for
/// `n / rate` seconds, starting when the previous chunk's time ends (or now, if the link has been
/// idle for longer than [`PACER_SLACK`] and the writer's own lateness).
#[derive(Debug)]
struct Pacer {
    bytes_per_sec: Option<f64>,
    free_at: Mutex<Option<Instant>>,
}

impl Pacer {
    fn new(bytes_per_sec: Option<f64>) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.filter(|r| *r > 0.0),
            free_at: Mutex::new(None),
        }
    }

    /// Books `n` bytes on the link; returns when they have gone through it. `late` is how
    /// long the writer overslept its previous chunk: time the link lost to a busy machine, not
    /// to idleness, made up rather than forgiven.
    fn book(&self, n: usize, now: Instant, late: Duration) -> Option<Instant> {
        let rate = self.bytes_per_sec?;
        let mut free_at = lock(&self.free_at);
        let earliest = now.checked_sub(PACER_SLACK.max(late)).unwrap_or(now);
        let start = free_at.map_or(now, |t| t.max(earliest));
        let done = start + Duration::from_secs_f64(n as f64 / rate);
        *free_at = Some(done);
        Some(done)
    }
}

/// A writer whose bytes pass through a connection's link and the shared one, each chunk
/// released when both have carried it.
struct Paced<'a, W: Write> {
    inner: &'a mut W,
    links: [&'a Pacer; 2],
    /// How long the previous chunk's sleep overshot (a loaded machine wakes threads late).
    late: Duration,
}

impl<'a, W: Write> Paced<'a, W> {
    fn new(inner: &'a mut W, links: [&'a Pacer; 2]) -> Self {
        Self {
            inner,
            links,
            late: Duration::ZERO,
        }
    }
}

impl<W: Write> Write for Paced<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let now = Instant::now();
        let done = self
            .links
            .iter()
            .filter_map(|l| l.book(buf.len(), now, self.late))
            .max();
        if let Some(t) = done {
            std::thread::sleep(t.saturating_duration_since(now));
            self.late = Instant::now().saturating_duration_since(t);
        }
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The two directions of a link: client to upstream, upstream to client.
struct Links {
    up: Pacer,
    down: Pacer,
}

impl Links {
    fn new(bytes_per_sec: Option<f64>) -> Self {
        Self {
            up: Pacer::new(bytes_per_sec),
            down: Pacer::new(bytes_per_sec),
        }
    }
}

struct Shared {
    upstream: String,
    plan: Box<dyn FaultPlan>,
    log: Mutex<Vec<Exchange>>,
    seq: AtomicU64,
    /// Whether exchanges are recorded (and request bodies hashed).
    recording: bool,
    net: NetModel,
    /// The shared link of [`NetModel::total_bytes_per_sec`].
    total: Links,
}

impl Shared {
    /// Records an exchange before its response reaches the client, so that a test that has
    /// read a response always finds it recorded; replaces the record at `index` (one made
    /// before a stall) if it is this exchange's. Returns its index for later corrections.
    fn record(&self, index: Option<usize>, ex: &Exchange) -> usize {
        if !self.recording {
            return 0;
        }
        let mut log = lock(&self.log);
        if let Some(i) = index {
            if let Some(r) = log.get_mut(i).filter(|r| r.seq == ex.seq) {
                *r = ex.clone();
                return i;
            }
        }
        log.push(ex.clone());
        log.len() - 1
    }

    fn set_error(&self, index: Option<usize>, ex: &Exchange, e: &io::Error) {
        if !self.recording {
            return;
        }
        let mut log = lock(&self.log);
        let error = Some(e.to_string());
        match index
            .and_then(|i| log.get_mut(i))
            .filter(|r| r.seq == ex.seq)
        {
            Some(r) => r.error = error,
            None => log.push(Exchange {
                error,
                ..ex.clone()
            }),
        }
    }
}

/// The recording reverse proxy. Stops on drop (every connection thread is joined).
pub struct RecordingProxy {
    /// `http://127.0.0.1:PORT`, to give the client as its endpoint.
    pub endpoint: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    shared: Arc<Shared>,
    _server: LoopbackServer,
}

impl fmt::Debug for RecordingProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingProxy")
            .field("endpoint", &self.endpoint)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl RecordingProxy {
    /// Starts a proxy forwarding everything to `upstream` (`127.0.0.1:PORT`, or an
    /// `http://` endpoint).
    pub fn start(upstream: &str) -> Self {
        Self::start_with(upstream, Box::new(ForwardAll))
    }

    /// Starts a proxy that asks `plan` what to do with each request.
    pub fn start_with(upstream: &str, plan: Box<dyn FaultPlan>) -> Self {
        Self::launch(upstream, plan, NetModel::default(), true)
    }

    /// Starts a proxy that forwards everything through the network `model`; with `recording`
    /// false it keeps no [`Exchange`]s and hashes nothing (a long-running benchmark proxy).
    pub fn start_modelled(upstream: &str, model: NetModel, recording: bool) -> Self {
        Self::launch(upstream, Box::new(ForwardAll), model, recording)
    }

    fn launch(upstream: &str, plan: Box<dyn FaultPlan>, net: NetModel, recording: bool) -> Self {
        let shared = Arc::new(Shared {
            upstream: super::http::authority(upstream).to_string(),
            plan,
            log: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            recording,
            net,
            total: Links::new(net.total_bytes_per_sec),
        });
        let sh = shared.clone();
        let server = LoopbackServer::start(Arc::new(move |stream, id, conns| {
            serve(stream, id, conns, &sh);
        }));
        Self {
            endpoint: format!("http://{}", server.addr),
            addr: server.addr.clone(),
            shared,
            _server: server,
        }
    }

    /// Every exchange so far, in request order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        let mut v = lock(&self.shared.log).clone();
        v.sort_by_key(|e| e.seq);
        v
    }

    /// Forgets the recorded exchanges (sequence numbers keep counting).
    pub fn clear(&self) {
        lock(&self.shared.log).clear();
    }
}

struct Upstream {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// What a client connection keeps across its requests.
struct ClientConn {
    /// The upstream connection, while the upstream keeps it open.
    upstream: Option<Upstream>,
    /// This connection's own link of [`NetModel::conn_bytes_per_sec`].
    links: Links,
}

/// What one exchange leaves for the connection's next request.
#[derive(PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Serves one client connection until it closes, an error occurs, or a fault ends it.
fn serve(client: TcpStream, id: u64, conns: &Arc<Conns>, sh: &Shared) {
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut cr = BufReader::new(read_half);
    let mut cw = client;
    let mut cc = ClientConn {
        upstream: None,
        links: Links::new(sh.net.conn_bytes_per_sec),
    };
    // An unreadable head (the client closed, or sent garbage) ends the connection.
    while let Ok(Some(head)) = read_head(&mut cr) {
        let Ok((method, target, version)) = head.request_line() else {
            let _ = write_response(&mut cw, 400, &[], b"bad request line", true);
            break;
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let req = RequestHead {
            seq: sh.seq.fetch_add(1, Ordering::SeqCst) + 1,
            method,
            path,
            query,
            headers: head.headers.clone(),
        };
        let mut ex = Exchange {
            seq: req.seq,
            conn: id,
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            headers: req.headers.clone(),
            body_len: 0,
            body_sha256_hex: hex::encode(Sha256::new().finish()),
            body_head: Vec::new(),
            status: 0,
            response_headers: Vec::new(),
            fault: None,
            error: None,
        };
        let client_close = head.has_token("connection", "close") || version == "HTTP/1.0";
        let mut index = None;
        let action = sh.plan.decide(&req);
        let result = match action {
            Action::Forward => forward(
                &head,
                &mut cr,
                &mut cw,
                &mut cc,
                id,
                conns,
                sh,
                &mut ex,
                &mut index,
                Cut::None,
            ),
            Action::Stall(d) => {
                ex.fault = Some(format!("stall {d:?}"));
                index = Some(sh.record(None, &ex));
                if !conns.sleep(d) {
                    break;
                }
                forward(
                    &head,
                    &mut cr,
                    &mut cw,
                    &mut cc,
                    id,
                    conns,
                    sh,
                    &mut ex,
                    &mut index,
                    Cut::None,
                )
            }
            Action::StallBody(d) => {
                ex.fault = Some(format!("stall body {d:?}"));
                forward(
                    &head,
                    &mut cr,
                    &mut cw,
                    &mut cc,
                    id,
                    conns,
                    sh,
                    &mut ex,
                    &mut index,
                    Cut::Stall(d),
                )
            }
            Action::TruncateResponse => {
                ex.fault = Some("truncate response".into());
                forward(
                    &head,
                    &mut cr,
                    &mut cw,
                    &mut cc,
                    id,
                    conns,
                    sh,
                    &mut ex,
                    &mut index,
                    Cut::Truncate,
                )
            }
            Action::Respond(status, body) => {
                ex.fault = Some(format!("respond {status}"));
                let content_type = if body.starts_with(b"<") {
                    "application/xml"
                } else {
                    "text/plain"
                };
                let headers = [("Content-Type".to_string(), content_type.to_string())];
                respond(
                    &head, &mut cr, &mut cw, sh, &mut ex, &mut index, status, &headers, &body,
                )
            }
            Action::RespondWith(status, headers, body) => {
                ex.fault = Some(format!("respond {status} with headers"));
                respond(
                    &head, &mut cr, &mut cw, sh, &mut ex, &mut index, status, &headers, &body,
                )
            }
            Action::ResetConnection => {
                ex.fault = Some("reset connection".into());
                sh.record(None, &ex);
                Ok(Next::Close)
            }
        };
        match result {
            Ok(Next::KeepAlive) if !client_close => {}
            Ok(_) => break,
            Err(e) => {
                if ex.status == 0 {
                    // Nothing was sent yet: tell the client, like a real gateway would.
                    ex.status = 502;
                    let _ = write_response(&mut cw, 502, &[], e.to_string().as_bytes(), true);
                }
                sh.set_error(index, &ex, &e);
                break;
            }
        }
    }
    let _ = cw.shutdown(Shutdown::Both);
    if let Some(u) = cc.upstream {
        let _ = u.writer.shutdown(Shutdown::Both);
    }
}

/// What [`forward`] does to the response body.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Relays it whole.
    None,
    /// Relays only part of it and ends the connection ([`Action::TruncateResponse`]).
    Truncate,
    /// Relays half, waits, then the rest ([`Action::StallBody`]).
    Stall(Duration),
}

/// Forwards one request and relays its response, cut as `cut` says.
#[allow(clippy::too_many_arguments)]
fn forward(
    head: &Head,
    cr: &mut BufReader<TcpStream>,
    cw: &mut TcpStream,
    cc: &mut ClientConn,
    id: u64,
    conns: &Conns,
    sh: &Shared,
    ex: &mut Exchange,
    index: &mut Option<usize>,
    cut: Cut,
) -> io::Result<Next> {
    let ClientConn {
        upstream: up,
        links,
    } = cc;
    let truncate = cut == Cut::Truncate;
    let framing = request_framing(head)?;
    let u = match up {
        Some(u) => u,
        None => {
            let s = TcpStream::connect(&sh.upstream).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("connecting to upstream {}: {e}", sh.upstream),
                )
            })?;
            s.set_nodelay(true)?;
            conns.track(id, &s);
            up.insert(Upstream {
                reader: BufReader::new(s.try_clone()?),
                writer: s,
            })
        }
    };
    u.writer.write_all(&head.raw)?;
    let mut sent = Instant::now();

    // RFC 9110 §10.1.1: relay the upstream's verdict on `Expect: 100-continue` instead of
    // answering for it, so a test sees what the emulator really does; stop waiting after a
    // while in case the upstream ignores the expectation.
    let mut early_final = None;
    if head.has_token("expect", "100-continue") && framing != Framing::Empty {
        u.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(EXPECT_WAIT_SECS)))?;
        let waited = u.reader.fill_buf().map(|b| !b.is_empty());
        u.reader.get_ref().set_read_timeout(None)?;
        match waited {
            Ok(true) => {
                let h = read_head(&mut u.reader)?.ok_or_else(upstream_eof)?;
                if is_interim(h.status()?) {
                    cw.write_all(&h.raw)?;
                } else {
                    early_final = Some(h);
                }
            }
            Ok(false) => return Err(upstream_eof()),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let body_unread = early_final.is_some();
    if !body_unread {
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        let mut paced = Paced::new(&mut u.writer, [&links.up, &sh.total.up]);
        ex.body_len = copy_body(cr, &mut paced, framing, &mut |b| {
            if sh.recording {
                hasher.update(b);
                capture(&mut head, b);
            }
        })?;
        if sh.recording {
            ex.body_sha256_hex = hex::encode(hasher.finish());
        }
        ex.body_head = head;
        sent = Instant::now();
    }
    let resp = match early_final {
        Some(h) => h,
        None => loop {
            let h = read_head(&mut u.reader)?.ok_or_else(upstream_eof)?;
            if is_interim(h.status()?) {
                cw.write_all(&h.raw)?;
                continue;
            }
            break h;
        },
    };
    let status = resp.status()?;
    let rframing = response_framing(&ex.method, status, &resp)?;
    let upstream_close = rframing == Framing::UntilClose
        || resp.has_token("connection", "close")
        || (resp.start_line.starts_with("HTTP/1.0") && !resp.has_token("connection", "keep-alive"))
        || body_unread;
    let client_close = rframing == Framing::UntilClose || body_unread || truncate;
    ex.status = status;
    ex.response_headers = resp.headers.clone();
    *index = Some(sh.record(*index, ex));
    // The store's time to first byte.
    if !sh.net.latency.is_zero() {
        let wait = (sent + sh.net.latency).saturating_duration_since(Instant::now());
        if !conns.sleep(wait) {
            *up = None;
            return Ok(Next::Close);
        }
    }

    let out_head = resp.raw_without_connection(client_close);
    if truncate {
        match rframing {
            Framing::Length(n) => {
                cw.write_all(&out_head)?;
                let half = n / 2;
                io::copy(&mut (&mut u.reader).take(half), cw)?;
            }
            _ => cw.write_all(&out_head[..out_head.len() / 2])?,
        }
        cw.flush()?;
        *up = None;
        linger_close(cr, cw);
        return Ok(Next::Close);
    }
    cw.write_all(&out_head)?;
    let mut paced = Paced::new(cw, [&links.down, &sh.total.down]);
    if let (Cut::Stall(d), Framing::Length(n)) = (cut, rframing) {
        io::copy(&mut (&mut u.reader).take(n / 2), &mut paced)?;
        paced.flush()?;
        if !conns.sleep(d) {
            *up = None;
            return Ok(Next::Close);
        }
        copy_body(
            &mut u.reader,
            &mut paced,
            Framing::Length(n - n / 2),
            &mut |_| {},
        )?;
    } else {
        copy_body(&mut u.reader, &mut paced, rframing, &mut |_| {})?;
    }
    paced.flush()?;
    if upstream_close {
        if let Some(u) = up.take() {
            let _ = u.writer.shutdown(Shutdown::Both);
        }
    }
    if body_unread {
        linger_close(cr, cw);
    }
    Ok(if client_close {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// Answers a request itself ([`Action::Respond`]).
#[allow(clippy::too_many_arguments)]
fn respond(
    head: &Head,
    cr: &mut BufReader<TcpStream>,
    cw: &mut TcpStream,
    sh: &Shared,
    ex: &mut Exchange,
    index: &mut Option<usize>,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<Next> {
    let framing = request_framing(head)?;
    // A client waiting for `100 Continue` may or may not send the body after a final
    // response; the only safe continuation is to close (RFC 9110 §10.1.1).
    let waiting = head.has_token("expect", "100-continue") && framing != Framing::Empty;
    if !waiting {
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        ex.body_len = copy_body(cr, &mut io::sink(), framing, &mut |b| {
            hasher.update(b);
            capture(&mut head, b);
        })?;
        ex.body_sha256_hex = hex::encode(hasher.finish());
        ex.body_head = head;
    }
    ex.status = status;
    ex.response_headers = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .chain([("content-length".into(), body.len().to_string())])
        .collect();
    *index = Some(sh.record(*index, ex));
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    write_response(cw, status, &headers, body, waiting)?;
    if waiting {
        linger_close(cr, cw);
        return Ok(Next::Close);
    }
    Ok(Next::KeepAlive)
}

fn is_interim(status: u16) -> bool {
    // 101 Switching Protocols is final for this connection; no AWS API uses it.
    (100..200).contains(&status) && status != 101
}

fn upstream_eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection before a response",
    )
}

/// Half-closes towards the client and discards what it still sends for a moment: closing with
/// unread input would make the kernel send a reset, which can destroy the response the client
/// has not read yet (RFC 9112 §9.6).
fn linger_close(cr: &mut BufReader<TcpStream>, cw: &mut TcpStream) {
    let _ = cw.flush();
    let _ = cw.shutdown(Shutdown::Write);
    let _ = cr
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(LINGER_SECS)));
    let _ = io::copy(cr, &mut io::sink());
}

/// How much of each request payload [`Exchange::body_head`] keeps.
pub const BODY_CAPTURE_BYTES: usize = 64 * 1024;

fn capture(head: &mut Vec<u8>, bytes: &[u8]) {
    let room = BODY_CAPTURE_BYTES.saturating_sub(head.len());
    head.extend_from_slice(&bytes[..room.min(bytes.len())]);
}
