//! The benchmarks' network model (`support::proxy::NetModel`, run by `tools/netproxy`): the
//! proxy with a model in front of a real moto process on loopback adds the time to first byte,
//! holds each connection and all of them together to their bandwidth caps in both directions
//! (within a tolerance), and still carries every byte unchanged.

use std::time::{Duration, Instant};

use crate::support::http::{Body, HttpClient};
use crate::support::moto::{FAKE_AUTHORIZATION, Moto};
use crate::support::proxy::{NetModel, RecordingProxy};
use crate::support::{noise as data, sha256_hex};

const MB: f64 = 1e6;
const BODY: usize = 3 * 1024 * 1024;

fn secs(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// `seconds` is at least the model's floor (never faster than the caps allow: the proxy paces
/// with 5 ms of slack) and at most `slack` times it plus a second of scheduling noise (the
/// emulator and this test share two cores).
fn assert_paced(what: &str, seconds: f64, floor: f64, slack: f64) {
    assert!(
        seconds >= floor - 0.01,
        "{what}: {seconds:.3} s is faster than the model allows ({floor:.3} s)"
    );
    assert!(
        seconds <= floor * slack + 1.0,
        "{what}: {seconds:.3} s is much slower than the model ({floor:.3} s)"
    );
}

fn auth() -> [(&'static str, &'static str); 1] {
    [("Authorization", FAKE_AUTHORIZATION)]
}

#[test]
fn net_model_adds_first_byte_latency_and_caps_a_connection_both_ways_bytes_unchanged() {
    let moto = Moto::start();
    let latency = Duration::from_millis(200);
    let rate = 4.0 * MB;
    let model = NetModel {
        latency,
        conn_bytes_per_sec: Some(rate),
        total_bytes_per_sec: None,
    };
    let proxy = RecordingProxy::start_modelled(&moto.addr, model, true);
    let plain = RecordingProxy::start(&moto.addr);
    let mut c = HttpClient::connect(&proxy.endpoint).unwrap();
    let mut direct = HttpClient::connect(&plain.endpoint).unwrap();

    // Latency: a small request takes the model's time to first byte, not loopback's.
    let r = c.request("PUT", "/bkt", &[], Body::None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut modelled = Vec::new();
    let mut loopback = Vec::new();
    for _ in 0..3 {
        modelled.push(secs(|| {
            let r = c.request("GET", "/bkt", &auth(), Body::None).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }));
        loopback.push(secs(|| {
            let r = direct.request("GET", "/bkt", &auth(), Body::None).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m, l) = (median(&mut modelled), median(&mut loopback));
    assert!(m >= latency.as_secs_f64(), "{m:.3} s: no latency added");
    assert!(
        m < latency.as_secs_f64() + 0.15 + l,
        "{m:.3} s: more than the latency added (loopback {l:.3} s)"
    );

    // Upload: the body crosses the connection's link at its rate, then the first byte waits.
    let body = data(BODY, 1);
    let floor = BODY as f64 / rate + latency.as_secs_f64();
    let put = secs(|| {
        let r = c
            .request("PUT", "/bkt/obj", &[], Body::Bytes(&body))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let md5 = openssl::hash::hash(openssl::hash::MessageDigest::md5(), &body).unwrap();
        assert_eq!(
            r.header("etag"),
            Some(format!("\"{}\"", hex::encode(md5)).as_str()),
            "moto stored other bytes"
        );
    });
    assert_paced("3 MiB PUT at 4 MB/s", put, floor, 1.3);

    // Download: the same on the way back, and the bytes are the ones stored.
    let get = secs(|| {
        let r = c.request("GET", "/bkt/obj", &auth(), Body::None).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == body, "GET returned other bytes");
    });
    assert_paced("3 MiB GET at 4 MB/s", get, floor, 1.3);

    // The proxy forwarded the request bytes unchanged, on one kept-alive client connection.
    let ex = proxy.exchanges();
    let put_ex = ex
        .iter()
        .find(|e| e.method == "PUT" && e.path == "/bkt/obj");
    assert_eq!(
        put_ex.map(|e| (e.body_len, e.body_sha256_hex.clone())),
        Some((BODY as u64, sha256_hex(&body)))
    );
    assert!(ex.iter().all(|e| e.conn == ex[0].conn && e.error.is_none()));
}

#[test]
fn net_model_holds_all_connections_to_the_aggregate_cap() {
    let moto = Moto::start();
    let model = NetModel {
        latency: Duration::from_millis(30),
        conn_bytes_per_sec: Some(4.0 * MB),
        total_bytes_per_sec: Some(6.0 * MB),
    };
    let proxy = RecordingProxy::start_modelled(&moto.addr, model, false);
    let conns = 4;
    let bodies: Vec<Vec<u8>> = (0..conns).map(|i| data(BODY, 10 + i as u64)).collect();
    let mut c = HttpClient::connect(&proxy.endpoint).unwrap();
    assert_eq!(
        c.request("PUT", "/agg", &[], Body::None).unwrap().status,
        200
    );

    // Four connections at once, each allowed 4 MB/s, but 6 MB/s in all: the aggregate governs,
    // in each direction.
    let total = (BODY * conns) as f64;
    let floor = total / (6.0 * MB);
    let endpoint = proxy.endpoint.clone();
    let run = |get: bool| {
        secs(|| {
            std::thread::scope(|s| {
                for (i, b) in bodies.iter().enumerate() {
                    let endpoint = &endpoint;
                    s.spawn(move || {
                        let mut c = HttpClient::connect(endpoint).unwrap();
                        let key = format!("/agg/{i}");
                        if get {
                            let r = c.request("GET", &key, &auth(), Body::None).unwrap();
                            assert_eq!(r.status, 200, "{}", r.text());
                            assert!(r.body == *b, "GET {key} returned other bytes");
                        } else {
                            let r = c.request("PUT", &key, &[], Body::Bytes(b)).unwrap();
                            assert_eq!(r.status, 200, "{}", r.text());
                        }
                    });
                }
            });
        })
    };
    let up = run(false);
    assert_paced("4 × 3 MiB PUT, 6 MB/s in all", up, floor, 1.25);
    let down = run(true);
    assert_paced("4 × 3 MiB GET, 6 MB/s in all", down, floor, 1.25);
}
