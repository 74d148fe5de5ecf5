//! An IMDSv2-only instance metadata server on 127.0.0.1 for the cloud tests, behaving like
//! EC2's where the AWS SDK can tell: session tokens from `PUT /latest/api/token`, token-less
//! (IMDSv1) reads refused, EC2-style directory listings, and every request recorded.
//!
//! moto's own IMDS cannot stand in: its token response lacks the
//! `x-aws-ec2-metadata-token-ttl-seconds` header that aws-config's IMDS client requires.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{LoopbackServer, copy_body, lock, read_head, request_framing, write_response};

/// The token endpoint.
const TOKEN_PATH: &str = "/latest/api/token";
/// Request header carrying the wanted token lifetime, echoed on the token response.
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Request header carrying the token on metadata reads.
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// EC2 accepts token lifetimes from one second to six hours.
const MAX_TTL_SECS: u64 = 21_600;

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsRequest {
    pub method: String,
    /// The request target without the query.
    pub path: String,
    /// Request headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Status of the response sent.
    pub status: u16,
}

impl ImdsRequest {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    /// Path under `/latest/` → body.
    metadata: BTreeMap<String, String>,
    /// Issued token → expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    requests: Mutex<Vec<ImdsRequest>>,
    /// When non-zero, the status every token request is answered with (no token).
    refuse_tokens: AtomicU16,
}

/// The IMDS test server. Stops on drop.
pub struct ImdsServer {
    /// `http://127.0.0.1:PORT`: the SDK's IMDS endpoint (builder or
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    pub endpoint: String,
    state: Arc<State>,
    _server: LoopbackServer,
}

impl fmt::Debug for ImdsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImdsServer")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl ImdsServer {
    /// Starts a server answering `GET /latest/<key>` with `metadata[key]`, for example
    /// `meta-data/instance-id`, `meta-data/placement/region` or
    /// `dynamic/instance-identity/document`. Directories are derived from the keys.
    pub fn start(metadata: BTreeMap<String, String>) -> Self {
        let state = Arc::new(State {
            metadata,
            tokens: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            refuse_tokens: AtomicU16::new(0),
        });
        let st = state.clone();
        let server = LoopbackServer::start(Arc::new(move |stream, _id, _conns| {
            let _ = serve(stream, &st);
        }));
        Self {
            endpoint: format!("http://{}", server.addr),
            state,
            _server: server,
        }
    }

    /// From now on, answers every token request with `status` and no token, as EC2 does with
    /// 403 when metadata is turned off for the instance.
    pub fn refuse_tokens(&self, status: u16) {
        self.state.refuse_tokens.store(status, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ImdsRequest> {
        lock(&self.state.requests).clone()
    }
}

fn serve(stream: TcpStream, st: &State) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some(head) = read_head(&mut reader)? {
        let (method, target, version) = head.request_line()?;
        copy_body(
            &mut reader,
            &mut io::sink(),
            request_framing(&head)?,
            &mut |_| {},
        )?;
        let path = target.split('?').next().unwrap_or_default().to_string();
        let (status, headers, body) = answer(st, &method, &path, &head.headers);
        lock(&st.requests).push(ImdsRequest {
            method,
            path,
            headers: head.headers.clone(),
            status,
        });
        let close = head.has_token("connection", "close") || version == "HTTP/1.0";
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        write_response(&mut writer, status, &headers, body.as_bytes(), close)?;
        if close {
            break;
        }
    }
    Ok(())
}

type Answer = (u16, Vec<(&'static str, String)>, String);

fn answer(st: &State, method: &str, path: &str, headers: &[(String, String)]) -> Answer {
    let text = |status, body: &str| -> Answer {
        (
            status,
            vec![("Content-Type", "text/plain".to_string())],
            body.to_string(),
        )
    };
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);

    if path == TOKEN_PATH {
        if method != "PUT" {
            return text(405, "");
        }
        let refuse = st.refuse_tokens.load(Ordering::SeqCst);
        if refuse != 0 {
            return text(refuse, "");
        }
        let ttl = header(TTL_HEADER).and_then(|v| v.parse::<u64>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=MAX_TTL_SECS).contains(t)) else {
            return text(400, "");
        };
        let token = new_token();
        lock(&st.tokens).insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
        let mut a = text(200, &token);
        a.1.push(("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string()));
        return a;
    }
    if method != "GET" {
        return text(405, "");
    }
    // IMDSv2 only: a read without a live token is refused like on an instance with
    // `HttpTokens=required`.
    let valid = header(TOKEN_HEADER)
        .and_then(|t| lock(&st.tokens).get(t.as_str()).copied())
        .is_some_and(|expiry| Instant::now() < expiry);
    if !valid {
        return text(401, "");
    }
    let Some(key) = path.strip_prefix("/latest/") else {
        return text(404, "");
    };
    if let Some(body) = st.metadata.get(key) {
        return text(200, body);
    }
    // A directory, with or without its trailing slash, lists its children one per line,
    // sub-directories with a trailing `/`, as EC2 does.
    let prefix = if key.is_empty() || key.ends_with('/') {
        key.to_string()
    } else {
        format!("{key}/")
    };
    let children: BTreeSet<String> = st
        .metadata
        .keys()
        .filter_map(|k| k.strip_prefix(prefix.as_str()))
        .filter(|rest| !rest.is_empty())
        .map(|rest| match rest.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => rest.to_string(),
        })
        .collect();
    if children.is_empty() {
        return text(404, "");
    }
    text(200, &children.into_iter().collect::<Vec<_>>().join("\n"))
}

/// A fresh random token (URL-safe, like EC2's opaque base64 tokens).
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    // The kernel's RNG via openssl; a failure here is a broken test machine.
    openssl::rand::rand_bytes(&mut bytes).expect("random token bytes");
    hex::encode(bytes)
}
