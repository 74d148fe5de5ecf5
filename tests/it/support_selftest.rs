//! Tests of the cloud test support itself: the moto server, the recording proxy (byte
//! faithfulness, keep-alive, 100-continue, fault injection) and the IMDSv2 server, driven by
//! the tiny raw HTTP client of `support::http`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::http::{Body, HttpClient, request};
use crate::support::imds::ImdsServer;
use crate::support::moto::{FAKE_AUTHORIZATION, Moto};
use crate::support::proxy::{Action, RecordingProxy, RequestHead};
use crate::support::{noise as data, sha256_hex};

const THREE_MIB: usize = 3 * 1024 * 1024;

fn md5_hex(b: &[u8]) -> String {
    hex::encode(openssl::hash::hash(openssl::hash::MessageDigest::md5(), b).unwrap())
}

fn imds_fixture() -> BTreeMap<String, String> {
    [
        ("meta-data/instance-id", "i-0123456789abcdef0"),
        ("meta-data/ami-id", "ami-0123456789abcdef0"),
        ("meta-data/placement/region", "eu-west-1"),
        ("meta-data/placement/availability-zone", "eu-west-1a"),
        (
            "dynamic/instance-identity/document",
            r#"{"region":"eu-west-1","instanceId":"i-0123456789abcdef0"}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn moto_answers_unsigned_list_buckets_with_xml_and_resets() {
    let moto = Moto::start();
    let r = request(&moto.endpoint, "GET", "/", &[], Body::None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("<ListAllMyBucketsResult"), "{}", r.text());
    assert!(!r.text().contains("<Name>"), "fresh moto has no bucket");

    // Unsigned bucket creation is accepted too: server mode checks no signature.
    let r = request(&moto.endpoint, "PUT", "/bkt1", &[], Body::None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = request(&moto.endpoint, "GET", "/", &[], Body::None).unwrap();
    assert!(
        listed.text().contains("<Name>bkt1</Name>"),
        "{}",
        listed.text()
    );

    moto.reset();
    let listed = request(&moto.endpoint, "GET", "/", &[], Body::None).unwrap();
    assert!(!listed.text().contains("<Name>"), "{}", listed.text());
}

#[test]
fn proxy_carries_3_mib_puts_to_moto_intact_and_records_them() {
    let moto = Moto::start();
    let proxy = RecordingProxy::start(&moto.addr);
    let plain = data(THREE_MIB, 1);
    let chunked = data(THREE_MIB, 2);
    let expecting = data(THREE_MIB, 3);

    // Everything on ONE client connection, although moto closes its side after every
    // response: the proxy keeps the client alive and reconnects upstream.
    let mut c = HttpClient::connect(&proxy.endpoint).unwrap();
    let r = c.request("PUT", "/bkt", &[], Body::None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("connection"), None, "moto's close is not relayed");

    let octets = ("Content-Type", "application/octet-stream");
    let r = c
        .request("PUT", "/bkt/plain", &[octets], Body::Bytes(&plain))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // moto's ETag is the MD5 of the bytes it stored.
    assert_eq!(
        r.header("etag"),
        Some(format!("\"{}\"", md5_hex(&plain)).as_str())
    );
    let r = c
        .request(
            "PUT",
            "/bkt/chunked?x-id=PutObject",
            &[octets],
            Body::Chunked(&chunked, 64 * 1024 + 7),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("etag"),
        Some(format!("\"{}\"", md5_hex(&chunked)).as_str())
    );
    let r = c
        .request(
            "PUT",
            "/bkt/expecting",
            &[octets, ("Expect", "100-continue")],
            Body::Bytes(&expecting),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.interim.is_empty() && r.interim.iter().all(|&s| s == 100),
        "moto's 100 Continue relayed: {:?}",
        r.interim
    );

    let auth = [("Authorization", FAKE_AUTHORIZATION)];
    for (key, want) in [
        ("/bkt/plain", &plain),
        ("/bkt/chunked", &chunked),
        ("/bkt/expecting", &expecting),
    ] {
        let r = c.request("GET", key, &auth, Body::None).unwrap();
        assert_eq!(r.status, 200, "GET {key}: {}", r.text());
        assert!(r.body == *want, "GET {key} returned different bytes");
    }
    // moto treats a request without Authorization as anonymous: private objects are refused.
    let r = c.request("GET", "/bkt/plain", &[], Body::None).unwrap();
    assert_eq!(r.status, 403);

    let ex = proxy.exchanges();
    let seen: Vec<(&str, &str, &str, u64, u16)> = ex
        .iter()
        .map(|e| {
            (
                e.method.as_str(),
                e.path.as_str(),
                e.query.as_str(),
                e.body_len,
                e.status,
            )
        })
        .collect();
    let n = THREE_MIB as u64;
    assert_eq!(
        seen,
        [
            ("PUT", "/bkt", "", 0, 200),
            ("PUT", "/bkt/plain", "", n, 200),
            ("PUT", "/bkt/chunked", "x-id=PutObject", n, 200),
            ("PUT", "/bkt/expecting", "", n, 200),
            ("GET", "/bkt/plain", "", 0, 200),
            ("GET", "/bkt/chunked", "", 0, 200),
            ("GET", "/bkt/expecting", "", 0, 200),
            ("GET", "/bkt/plain", "", 0, 403),
        ]
    );
    assert_eq!(ex[1].body_sha256_hex, sha256_hex(&plain));
    assert_eq!(ex[2].body_sha256_hex, sha256_hex(&chunked));
    assert_eq!(ex[3].body_sha256_hex, sha256_hex(&expecting));
    assert_eq!(ex[2].header("transfer-encoding"), Some("chunked"));
    assert_eq!(ex[3].header("expect"), Some("100-continue"));
    assert_eq!(ex[4].header("authorization"), Some(FAKE_AUTHORIZATION));
    assert!(
        ex.iter().all(|e| e.conn == ex[0].conn),
        "one client connection"
    );
    assert!(ex.iter().all(|e| e.fault.is_none() && e.error.is_none()));
    assert_eq!(
        (1..=8).collect::<Vec<u64>>(),
        ex.iter().map(|e| e.seq).collect::<Vec<_>>()
    );

    proxy.clear();
    assert!(proxy.exchanges().is_empty());
}

#[test]
fn proxy_keeps_client_connections_alive_and_tells_them_apart() {
    let imds = ImdsServer::start(imds_fixture());
    let proxy = RecordingProxy::start(&imds.endpoint);
    let ttl = [("X-aws-ec2-metadata-token-ttl-seconds", "60")];
    let mut a = HttpClient::connect(&proxy.endpoint).unwrap();
    let mut b = HttpClient::connect(&proxy.endpoint).unwrap();
    for which in [0, 1, 0] {
        let c = if which == 0 { &mut a } else { &mut b };
        let r = c
            .request("PUT", "/latest/api/token", &ttl, Body::None)
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let conns: Vec<u64> = proxy.exchanges().iter().map(|e| e.conn).collect();
    assert_eq!(conns.len(), 3);
    assert_eq!(conns[0], conns[2], "second request reused the connection");
    assert_ne!(conns[0], conns[1]);
}

#[test]
fn proxy_injects_a_503_and_records_it() {
    let imds = ImdsServer::start(imds_fixture());
    let plan = |req: &RequestHead| {
        if req.path == "/fail" {
            Action::Respond(503, b"<Error><Code>SlowDown</Code></Error>".to_vec())
        } else {
            Action::Forward
        }
    };
    let proxy = RecordingProxy::start_with(&imds.endpoint, Box::new(plan));
    let mut c = HttpClient::connect(&proxy.endpoint).unwrap();
    let body = data(100_000, 4);
    let r = c
        .request("PUT", "/fail?uploads", &[], Body::Bytes(&body))
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "<Error><Code>SlowDown</Code></Error>");
    assert_eq!(r.header("content-type"), Some("application/xml"));
    // The connection survives an injected error (the body was drained) and forwards again.
    let r = c
        .request(
            "PUT",
            "/latest/api/token",
            &[("x-aws-ec2-metadata-token-ttl-seconds", "5")],
            Body::None,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    // A client waiting for 100 Continue gets the error instead, and sends no body.
    let mut waiting = HttpClient::connect(&proxy.endpoint).unwrap();
    let r = waiting
        .request(
            "PUT",
            "/fail",
            &[("Expect", "100-continue")],
            Body::Bytes(&body),
        )
        .unwrap();
    assert_eq!((r.status, r.interim.len()), (503, 0));

    let ex = proxy.exchanges();
    assert_eq!(ex.len(), 3);
    assert_eq!(
        (ex[0].path.as_str(), ex[0].query.as_str()),
        ("/fail", "uploads")
    );
    assert_eq!((ex[0].status, ex[0].body_len), (503, 100_000));
    assert_eq!(ex[0].body_sha256_hex, sha256_hex(&body));
    assert_eq!(ex[0].fault.as_deref(), Some("respond 503"));
    assert_eq!((ex[1].status, ex[1].fault.as_deref()), (200, None));
    assert_eq!(ex[1].conn, ex[0].conn);
    assert_eq!((ex[2].status, ex[2].body_len), (503, 0));
    // Only the forwarded request reached the upstream.
    let upstream: Vec<String> = imds.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(upstream, ["/latest/api/token"]);
}

#[test]
fn proxy_stalls_truncates_and_resets_on_demand() {
    let imds = ImdsServer::start(imds_fixture());
    let plan = |req: &RequestHead| match req.path.as_str() {
        "/stall/latest/api/token" => Action::Stall(Duration::from_millis(300)),
        "/truncate/latest/api/token" => Action::TruncateResponse,
        "/reset" => Action::ResetConnection,
        _ => Action::Forward,
    };
    let proxy = RecordingProxy::start_with(&imds.endpoint, Box::new(plan));
    let ttl = [("x-aws-ec2-metadata-token-ttl-seconds", "5")];

    let t = Instant::now();
    // The IMDS server sees the path unchanged, so it refuses the method; the delay matters.
    let r = request(
        &proxy.endpoint,
        "PUT",
        "/stall/latest/api/token",
        &ttl,
        Body::None,
    )
    .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 405);

    let err = request(
        &proxy.endpoint,
        "GET",
        "/truncate/latest/api/token",
        &[],
        Body::None,
    )
    .expect_err("a truncated response is an error");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");

    let err = request(&proxy.endpoint, "GET", "/reset", &[], Body::None)
        .expect_err("a reset connection is an error");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );

    let faults: Vec<(Option<String>, u16)> = proxy
        .exchanges()
        .into_iter()
        .map(|e| (e.fault, e.status))
        .collect();
    assert_eq!(
        faults,
        [
            (Some("stall 300ms".to_string()), 405),
            (Some("truncate response".to_string()), 401),
            (Some("reset connection".to_string()), 0),
        ]
    );
}

#[test]
fn proxy_counts_requests_for_plans_and_stops_with_idle_clients() {
    let imds = ImdsServer::start(imds_fixture());
    // A plan with state: fail only the second request, like a transient throttle.
    let calls = AtomicU64::new(0);
    let plan = move |_: &RequestHead| {
        if calls.fetch_add(1, Ordering::SeqCst) == 1 {
            Action::Respond(500, Vec::new())
        } else {
            Action::Forward
        }
    };
    let proxy = RecordingProxy::start_with(&imds.endpoint, Box::new(plan));
    let mut c = HttpClient::connect(&proxy.endpoint).unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            c.request("GET", "/latest/meta-data/", &[], Body::None)
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(statuses, [401, 500, 401]);

    // The idle kept-alive client connection must not keep the proxy's threads alive.
    let t = Instant::now();
    drop(proxy);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(c.request("GET", "/", &[], Body::None).is_err());
}

#[test]
fn imds_issues_tokens_and_serves_metadata_v2_only() {
    let imds = ImdsServer::start(imds_fixture());
    let mut c = HttpClient::connect(&imds.endpoint).unwrap();
    let r = c
        .request(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
            Body::None,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    let token = r.text();
    assert!(token.len() >= 32, "{token:?}");
    let with_token = [("x-aws-ec2-metadata-token", token.as_str())];

    let get = |c: &mut HttpClient, path: &str, h: &[(&str, &str)]| {
        let r = c.request("GET", path, h, Body::None).unwrap();
        (r.status, r.text())
    };
    assert_eq!(
        get(&mut c, "/latest/meta-data/instance-id", &with_token),
        (200, "i-0123456789abcdef0".into())
    );
    assert_eq!(
        get(
            &mut c,
            "/latest/dynamic/instance-identity/document",
            &with_token
        ),
        (
            200,
            r#"{"region":"eu-west-1","instanceId":"i-0123456789abcdef0"}"#.into()
        )
    );
    // Listings, one child per line, directories with a trailing slash.
    assert_eq!(
        get(&mut c, "/latest/meta-data/", &with_token),
        (200, "ami-id\ninstance-id\nplacement/".into())
    );
    assert_eq!(
        get(&mut c, "/latest/meta-data/placement", &with_token),
        (200, "availability-zone\nregion".into())
    );
    assert_eq!(
        get(&mut c, "/latest/", &with_token),
        (200, "dynamic/\nmeta-data/".into())
    );
    assert_eq!(get(&mut c, "/latest/meta-data/nope", &with_token).0, 404);
    assert_eq!(get(&mut c, "/2009-04-04/meta-data/", &with_token).0, 404);

    // IMDSv1 (no token) and unknown tokens are refused.
    assert_eq!(get(&mut c, "/latest/meta-data/instance-id", &[]).0, 401);
    assert_eq!(
        get(
            &mut c,
            "/latest/meta-data/instance-id",
            &[("x-aws-ec2-metadata-token", "forged")]
        )
        .0,
        401
    );
    // Token lifetimes outside 1..=21600 s, or missing, are bad requests.
    for ttl in [Some("0"), Some("21601"), Some("abc"), Some("-1"), None] {
        let h: Vec<(&str, &str)> = ttl
            .map(|t| ("x-aws-ec2-metadata-token-ttl-seconds", t))
            .into_iter()
            .collect();
        let r = c
            .request("PUT", "/latest/api/token", &h, Body::None)
            .unwrap();
        assert_eq!(r.status, 400, "ttl {ttl:?}");
    }
    assert_eq!(get(&mut c, "/latest/api/token", &[]).0, 405);
    // Tokens are fresh each time.
    let r = c
        .request(
            "PUT",
            "/latest/api/token",
            &[("x-aws-ec2-metadata-token-ttl-seconds", "1")],
            Body::None,
        )
        .unwrap();
    assert_ne!(r.text(), token);

    let reqs = imds.requests();
    assert_eq!(reqs.len(), 17);
    assert_eq!(
        (
            reqs[0].method.as_str(),
            reqs[0].path.as_str(),
            reqs[0].status
        ),
        ("PUT", "/latest/api/token", 200)
    );
    assert_eq!(
        reqs[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    assert_eq!(
        reqs[1].header("x-aws-ec2-metadata-token"),
        Some(token.as_str())
    );
    assert_eq!(
        (reqs[8].path.as_str(), reqs[8].status),
        ("/latest/meta-data/instance-id", 401)
    );
}
