//! `netproxy`: the integration tests' recording proxy (tests/it/support/proxy.rs) as a process
//! on 127.0.0.1, forwarding to an S3 emulator through a network model, for the benchmark
//! scripts. It forwards bytes unchanged, keeps client connections alive (moto closes its own
//! after every response) and records nothing.
//!
//! Usage: netproxy --upstream 127.0.0.1:PORT [--latency-ms MS] [--conn-mb-s MB_S]
//!                 [--total-mb-s MB_S]
//! Prints `http://127.0.0.1:PORT` (the endpoint to give the client) on one line of stdout once
//! it listens, then serves until killed. Rates are in MB/s (10^6 bytes a second) in each
//! direction; 0 means no cap. See docs/benchmarks.md.

#[allow(dead_code)]
#[path = "../../../tests/it/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../../../tests/it/support/proxy.rs"]
mod proxy;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use proxy::{NetModel, RecordingProxy};

const USAGE: &str = "usage: netproxy --upstream 127.0.0.1:PORT [--latency-ms MS] \
                     [--conn-mb-s MB_S] [--total-mb-s MB_S]";

fn parse(args: &[String]) -> Result<(String, NetModel), String> {
    let mut upstream = None;
    let mut model = NetModel::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{flag}: not a number >= 0: {value:?}"))
        };
        let rate = |mb_s: f64| (mb_s > 0.0).then_some(mb_s * 1e6);
        match flag.as_str() {
            "--upstream" => upstream = Some(value.clone()),
            "--latency-ms" => model.latency = Duration::from_secs_f64(number()? / 1e3),
            "--conn-mb-s" => model.conn_bytes_per_sec = rate(number()?),
            "--total-mb-s" => model.total_bytes_per_sec = rate(number()?),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    let upstream = upstream.ok_or_else(|| format!("--upstream is required\n{USAGE}"))?;
    let authority = http::authority(&upstream);
    if !authority.starts_with("127.") && !authority.starts_with("localhost:") {
        return Err(format!("--upstream must be on loopback, not {upstream:?}"));
    }
    Ok((upstream, model))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (upstream, model) = match parse(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("netproxy: {e}");
            return ExitCode::from(2);
        }
    };
    let proxy = RecordingProxy::start_modelled(&upstream, model, false);
    let mut out = std::io::stdout();
    if writeln!(out, "{}", proxy.endpoint)
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    eprintln!("netproxy: {} -> {upstream}, {model:?}", proxy.endpoint);
    loop {
        std::thread::park();
    }
}
