//! libFuzzer over the whole request path in process: the input is a raw HTTP/1.1 exchange fed
//! through an in-memory pipe to hyper's parser and the real API (`api::Api`: the stats request
//! matched before the router, the rest by it), with the connection settings `api::serve` uses
//! (`api::http1`). Whatever the input: no panic, no 5xx (the service is ready, so not even 503),
//! and no token in what comes back.
//!
//! `{{TOKEN}}` in an input stands for a valid token, so `tests/corpus/` seeds it usefully:
//! `cargo +nightly fuzz run http_request fuzz/corpus/http_request tests/corpus`.
#![no_main]

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use permit_stats::{
    api::{self, Api, AppState, Limits, auth::Tokens},
    events::{Change, PermitEvent},
    projection::Projection,
    status::IngestStatus,
    telemetry,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "fuzz-token-OC-TOMA-0123456789";

struct Harness {
    runtime: tokio::runtime::Runtime,
    api: Api,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let projection = Arc::new(Projection::new());
        for (client, id, zone, permit_type) in [
            ("OC-TOMA", "a", "Lot 01", "standard"),
            ("OC-TOMA", "b", "Lot 02", "temp"),
            ("OC-OTHER", "c", "Lot 01", "secret"),
        ] {
            projection.apply(&PermitEvent {
                client: client.into(),
                reference_id: id.into(),
                revision: None,
                occurred_at_ms: Some(1_000),
                change: Change::Created { zone: zone.into(), permit_type: permit_type.into() },
            });
        }
        let digest = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))
        };
        let file = format!(
            "[[tokens]]\nclient = \"OC-TOMA\"\nname = \"fuzz\"\npermissions = [\"permit-create\"]\nsha256 = \"{digest}\"\n"
        );
        let status = Arc::new(IngestStatus::new());
        status.mark_ready();
        let state = AppState {
            projection,
            tokens: Arc::new(ArcSwap::from_pointee(Tokens::parse(&file).expect("valid"))),
            status,
            // Inside the harness's one-time init: the only install in this process.
            metrics: telemetry::install().expect("no recorder installed before the harness"),
        };
        Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            api: Api::new(state, &Limits::default()),
        }
    })
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let input = replace(data, b"{{TOKEN}}", TOKEN.as_bytes());
    let received: Vec<u8> = harness.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let connection = api::http1(&Limits::default())
            .serve_connection(TokioIo::new(server), harness.api.clone());
        let exchange = async {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut received: Vec<u8> = Vec::new();
            let _ = client.read_to_end(&mut received).await;
            received
        };
        let (_, received) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(connection, exchange)
        })
        .await
        .expect("an exchange over a closed pipe ends");
        received
    });
    let text = String::from_utf8_lossy(&received);
    for (at, _) in text.match_indices("HTTP/1.") {
        if let Some(status) = text
            .get(at + 9..at + 12)
            .and_then(|s| s.parse::<u16>().ok())
        {
            assert!(
                status < 500,
                "status {status} for {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
    // A preflight's Access-Control-Allow-Headers mirrors the request's own
    // Access-Control-Request-Headers (documented CORS behaviour): that is the client's own
    // text, not an echo of the token from the body, so it is left out of this check.
    let echoed = text
        .split("\r\n")
        .filter(|line| {
            !line
                .to_ascii_lowercase()
                .starts_with("access-control-allow-headers:")
        })
        .any(|line| line.contains(TOKEN));
    assert!(!echoed, "the token was echoed");
    assert!(
        !text.contains("secret"),
        "another client's permits were shown"
    );
});
