//! A real browser: headless Chromium loads a page from another origin that runs the vendor's
//! documented `XMLHttpRequest` example (POST, `Content-Type: application/json`, so a CORS
//! preflight comes first) against a running permit-stats, and the page shows what it received.
//!
//! The page writes the status, `getAllResponseHeaders()` and the body text into the DOM, which
//! `--dump-dom` prints once the requests have finished (`--virtual-time-budget` waits for them).
//! Reading `x-stats-lag` and `x-stats-as-of` there proves `Access-Control-Expose-Headers` works.
//!
//! The same page runs a second time against the API over HTTPS, with a certificate of a test CA
//! that Chromium trusts the way a user's machine does: in the NSS database of its `$HOME`
//! (`certutil`), no certificate errors ignored.
//!
//! Needs Debian's `chromium`, and `certutil` (`libnss3-tools`) for HTTPS (`.ci/run` installs
//! both). Without them the tests say so loudly and pass, except under CI (`CI` set), where they
//! fail.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use axum::{Router, response::Html, routing::get};
use permit_stats::api::{Limits, tls::Tls};

use crate::support::{
    server::{self, TOKEN},
    skip_unless_ci,
    tls::Pki,
};

const CHROMIUM: &str = "chromium";

/// The vendor's example, as its page documents it, plus the lines that put what it logs into
/// the DOM; then the same with an unknown token, to show a page can read why it was refused.
fn page(api: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Permit Stats</title></head>
<body>
<pre id="status">pending</pre>
<pre id="headers"></pre>
<pre id="body"></pre>
<pre id="refused-status">pending</pre>
<pre id="refused-body"></pre>
<script>
function show(prefix, xhr) {{
  document.getElementById(prefix + "status").textContent = String(xhr.status);
  if (prefix === "") {{
    document.getElementById("headers").textContent = xhr.getAllResponseHeaders();
  }}
  document.getElementById(prefix + "body").textContent = xhr.responseText;
}}

function refused() {{
  var xhr = new XMLHttpRequest();
  xhr.addEventListener("readystatechange", function () {{
    if (this.readyState === 4) {{
      show("refused-", this);
    }}
  }});
  xhr.open("POST", "{api}/api/OC-TOMA/v1/permits/stats");
  xhr.setRequestHeader("Content-Type", "application/json");
  xhr.setRequestHeader("Accept", "application/json");
  xhr.send(JSON.stringify({{"apiToken": "not-a-valid-token", "zones": "Lot 01,Lot 02"}}));
}}

var body = {{"apiToken": "{TOKEN}", "zones": "Lot 01,Lot 02"}};
var xhr = new XMLHttpRequest();
xhr.addEventListener("readystatechange", function () {{
  if (this.readyState === 4) {{
    console.log(this.status);
    console.log(this.getAllResponseHeaders());
    console.log(this.responseText);
    show("", this);
    refused();
  }}
}});
xhr.open("POST", "{api}/api/OC-TOMA/v1/permits/stats");
xhr.setRequestHeader("Content-Type", "application/json");
xhr.setRequestHeader("Accept", "application/json");
xhr.send(JSON.stringify(body));
</script>
</body></html>
"#
    )
}

/// The text of `<pre id="{id}">` in the dumped DOM, unescaped.
fn element(dom: &str, id: &str) -> String {
    let open = format!(r#"<pre id="{id}">"#);
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in:\n{dom}"))
        + open.len();
    let end = dom[start..].find("</pre>").expect("closed") + start;
    dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn chromium_available() -> bool {
    Command::new(CHROMIUM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs headless Chromium on `url`, with `$HOME` at `home` when given (where its NSS database
/// is), and returns the DOM it dumps.
fn dump_dom(url: &str, home: Option<&Path>) -> String {
    let profile = std::env::temp_dir().join(format!(
        "permit-stats-chromium-{}-{}",
        std::process::id(),
        permit_stats::api::auth::generate()
    ));
    let mut command = Command::new(CHROMIUM);
    if let Some(home) = home {
        command.env("HOME", home);
    }
    let mut child = command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 120 s:\n{}",
                errors.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&profile);
    let dom = reader.join().unwrap_or_default();
    assert!(
        dom.contains("<html"),
        "chromium printed no DOM:\n{}",
        errors.join().unwrap_or_default()
    );
    dom
}

/// A `$HOME` whose NSS database (`.pki/nssdb`, where Chromium on Linux looks) trusts the CA
/// of `ca` for servers, as `certutil` sets it up on a user's machine.
fn home_trusting(ca: &Path, home: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb folder");
    let db = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .output()
            .expect("run certutil");
        assert!(out.status.success(), "certutil {args:?}: {out:?}");
    };
    certutil(&["-d", &db, "-N", "--empty-password"]);
    let ca = ca.to_str().expect("utf-8 path");
    certutil(&[
        "-d",
        &db,
        "-A",
        "-t",
        "C,,",
        "-n",
        "permit-stats test CA",
        "-i",
        ca,
    ]);
}

fn certutil_available() -> bool {
    Command::new("certutil")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendors_xmlhttprequest_example_works_from_another_origin_in_chromium() {
    if !chromium_available() {
        skip_unless_ci(
            "the real-browser test (chromium is not installed)",
            "install it: apt-get install chromium chromium-driver",
        );
        return;
    }
    let api = server::serve(server::fixture(true).state, Limits::default()).await;
    // The page comes from another origin: another host name and another port.
    let api_origin = format!("http://127.0.0.1:{}", api.addr.port());
    run_the_example(&api_origin, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendors_example_works_over_https_with_a_certificate_chromium_trusts() {
    if !chromium_available() || !certutil_available() {
        skip_unless_ci(
            "the HTTPS real-browser test (chromium or certutil is not installed)",
            "install them: apt-get install chromium chromium-driver libnss3-tools",
        );
        return;
    }
    let (pki, _) = Pki::new();
    let tls = Tls::load(&pki.files).expect("the test pair loads");
    let api = server::serve_tls(server::fixture(true).state, Limits::default(), tls).await;
    let home = pki.dir.0.join("home");
    home_trusting(&pki.ca_file(), &home);
    // Another origin again (an HTTP page calling an HTTPS API), by IP: the certificate names
    // 127.0.0.1 too.
    let api_origin = format!("https://127.0.0.1:{}", api.addr.port());
    run_the_example(&api_origin, Some(&home)).await;
}

/// Serves the page from another origin, runs it in Chromium against the API at `api_origin`,
/// and checks what the page shows.
async fn run_the_example(api_origin: &str, home: Option<&Path>) {
    let html = page(api_origin);
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the page server");
    let page_port = pages.local_addr().expect("address").port();
    let page_server = tokio::spawn(async move {
        let router = Router::new().route("/", get(move || async move { Html(html) }));
        axum::serve(pages, router).await
    });

    let url = format!("http://localhost:{page_port}/");
    let home = home.map(Path::to_path_buf);
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url, home.as_deref()))
        .await
        .expect("chromium ran");
    page_server.abort();

    assert_eq!(element(&dom, "status"), "200", "{dom}");
    assert_eq!(
        element(&dom, "body"),
        r#"{"data":[{"type":"temp","zone":"Lot 01","total":"1"},{"type":"validator","zone":"Lot 02","total":"1"}]}"#
    );
    let headers = element(&dom, "headers").to_ascii_lowercase();
    assert!(headers.contains("x-stats-lag: 0"), "{headers}");
    assert!(
        headers.contains("x-stats-as-of: 2026-11-29t03:30:44.25z"),
        "{headers}"
    );
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    // A refusal is readable by the page too: the status and the vendor's error body.
    assert_eq!(element(&dom, "refused-status"), "403", "{dom}");
    assert_eq!(
        element(&dom, "refused-body"),
        r#"{"ErrorCode":9002,"ErrorMessage":"apiToken is not valid for this request"}"#
    );
}
