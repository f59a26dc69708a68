//! Tokens in the running binary: the token file is reloaded on SIGHUP (and, in-process, when it
//! changes on disk), a malformed file keeps the previous tokens and says why, the demo token
//! survives reloads, and no token ever reaches a log line or an answer, with logs at debug level.
//!
//! `permit-stats serve` runs here with its embedded broker, so no Kafka is needed.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use permit_stats::api::auth::{self, Tokens};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::support::{TempDir, service::Service};

/// Replaces the file the way careful tools do: write aside, then rename over it.
fn write_atomically(path: &Path, text: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

fn entry(token: &str, name: &str) -> String {
    auth::entry_for(token, "OC-TOMA", name).expect("serializable")
}

/// Status and body of a stats request with `token`.
async fn ask(http: &reqwest::Client, base: &str, token: &str) -> (StatusCode, String) {
    let response = http
        .post(format!("{base}/api/OC-TOMA/v1/permits/stats"))
        .header("Content-Type", "application/json")
        .body(format!(
            r#"{{"apiToken":"{token}","zones":"Lot 01,Lot 02"}}"#
        ))
        .send()
        .await
        .expect("answered");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn sighup_reloads_the_token_file_and_no_token_is_ever_logged_or_echoed() {
    let scratch = TempDir::new("permit-stats-reload");
    let path = scratch.0.join("tokens.toml");
    let (first, second, in_bad_file) = (auth::generate(), auth::generate(), auth::generate());
    write_atomically(&path, &entry(&first, "first integration"));
    let path_arg = path.to_str().expect("utf-8 path");
    let mut service = Service::serve(
        &[],
        &[
            "--demo",
            "--demo-rate",
            "50",
            "--tokens",
            path_arg,
            "--tokens-poll-interval",
            "0",
        ],
        Some("debug"),
    );

    // The demo prints its address and token in a ready-to-paste curl.
    let (base, demo) = service
        .wait_for(Duration::from_secs(60), "the demo's curl", async |s| {
            let out = s.stdout();
            let url = out
                .split("'http://")
                .nth(1)?
                .split("/api/")
                .next()?
                .to_owned();
            let token = out.split(r#""apiToken":""#).nth(1)?.split('"').next()?;
            Some((format!("http://{url}"), token.to_owned()))
        })
        .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    service
        .wait_for(Duration::from_secs(60), "ready", async |_| {
            let ready = http.get(format!("{base}/health/ready")).send().await.ok()?;
            (ready.status() == StatusCode::OK).then_some(())
        })
        .await;

    let mut bodies = Vec::new();
    let mut check = async |token: &str, expected: StatusCode| {
        let (status, body) = ask(&http, &base, token).await;
        assert_eq!(status, expected, "{body}");
        bodies.push(body);
    };
    check(&first, StatusCode::OK).await;
    check(&demo, StatusCode::OK).await;
    check(&second, StatusCode::FORBIDDEN).await;
    // Invalid tokens of every kind, none of which may be echoed or logged either.
    let too_long = format!("{first}{second}");
    let bad_chars = format!("{}!", &second[..30]);
    check(&too_long, StatusCode::BAD_REQUEST).await;
    check(&bad_chars, StatusCode::BAD_REQUEST).await;

    // The file changes; without a signal (polling is off) nothing happens, with SIGHUP the new
    // set replaces the old, and the demo token (in memory only) stays.
    write_atomically(&path, &entry(&second, "second integration"));
    check(&first, StatusCode::OK).await;
    service.signal("HUP");
    service
        .wait_for(Duration::from_secs(10), "the reload", async |_| {
            (ask(&http, &base, &second).await.0 == StatusCode::OK).then_some(())
        })
        .await;
    check(&first, StatusCode::FORBIDDEN).await;
    check(&demo, StatusCode::OK).await;

    // A malformed file, with a token pasted into it by mistake: the old set stays, the log
    // says why, and the pasted token is not quoted.
    write_atomically(
        &path,
        &format!(
            "{}\n[[tokens]]\nclient = \"OC-TOMA\"\n{in_bad_file}\n",
            entry(&second, "second integration")
        ),
    );
    service.signal("HUP");
    service
        .wait_for(
            Duration::from_secs(10),
            "the refusal in the log",
            async |s| {
                s.stderr()
                    .contains("token file not reloaded; keeping the previous tokens")
                    .then_some(())
            },
        )
        .await;
    check(&second, StatusCode::OK).await;
    check(&demo, StatusCode::OK).await;
    check(&in_bad_file, StatusCode::FORBIDDEN).await;

    service.signal("TERM");
    let status = service
        .wait_exit(Duration::from_secs(15))
        .expect("an exit within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status}");

    let (stdout, stderr) = (service.stdout(), service.stderr());
    // The logs were at debug level and did record the requests, by the token's name.
    assert!(
        stderr.contains("DEBUG") && stderr.contains("second integration"),
        "{stderr}"
    );
    assert!(stderr.contains("token file reloaded"), "{stderr}");
    for token in [&first, &second, &in_bad_file, &too_long, &bad_chars, &demo] {
        assert!(
            !stderr.contains(token.as_str()),
            "a token in the log:\n{stderr}"
        );
        assert!(
            !bodies.iter().any(|body| body.contains(token.as_str())),
            "a token in an answer"
        );
        // The demo token is printed once on stdout by design (the curl); no other is.
        if token != &demo {
            assert!(!stdout.contains(token.as_str()), "a token on stdout");
        }
    }
    for prefix in [&first[..20], &second[..20], &in_bad_file[..20]] {
        assert!(!stderr.contains(prefix), "part of a token in the log");
    }
}

#[tokio::test]
async fn a_changed_token_file_is_picked_up_without_a_signal() {
    let scratch = TempDir::new("permit-stats-poll");
    let path = scratch.0.join("tokens.toml");
    let (first, second) = (auth::generate(), auth::generate());
    write_atomically(&path, &entry(&first, "first"));
    let tokens = Arc::new(ArcSwap::from_pointee(
        Tokens::load(&path).expect("valid file"),
    ));
    let stop = CancellationToken::new();
    let task = auth::spawn_reload(
        Some(path.clone()),
        Arc::clone(&tokens),
        Some(Duration::from_millis(50)),
        stop.clone(),
    );
    let wait_until = async |what: &dyn Fn(&Tokens) -> bool, why: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what(&tokens.load()) {
            assert!(Instant::now() < deadline, "timed out waiting for {why}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Replaced by a rename (a new inode)...
    write_atomically(&path, &entry(&second, "second"));
    wait_until(
        &|t| t.authorize_stats(&second, "OC-TOMA").is_some(),
        "the renamed file",
    )
    .await;
    assert_eq!(tokens.load().authorize_stats(&first, "OC-TOMA"), None);
    // ...and written in place (same inode, new length and time).
    std::fs::write(&path, entry(&first, "first again")).expect("write in place");
    wait_until(
        &|t| t.authorize_stats(&first, "OC-TOMA").is_some(),
        "the rewritten file",
    )
    .await;
    // A broken file keeps the set; fixing it is picked up again.
    std::fs::write(&path, "[[tokens]\n").expect("write in place");
    std::fs::write(&path, entry(&second, "second again")).expect("write in place");
    wait_until(
        &|t| t.authorize_stats(&second, "OC-TOMA").is_some(),
        "the fixed file",
    )
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the reload task stops")
        .expect("it did not panic");
}
