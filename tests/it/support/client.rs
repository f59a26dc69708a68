//! HTTP against a running binary, the way a client of the API sees it: answers with their
//! headers, the stats request, `/metrics` samples, and the wait until every client's answer is
//! the reference model's, byte for byte.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    model::Model,
    service::Service,
    workload::{CLIENTS, Workload},
};

/// How long a start or a catch-up may take (debug build, shared 2-core machine).
pub const CONVERGE: Duration = Duration::from_secs(90);

/// One answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// `X-Stats-Lag` as a number.
    pub fn lag(&self) -> u64 {
        self.header("x-stats-lag")
            .unwrap_or_else(|| panic!("no X-Stats-Lag on a {} answer", self.status))
            .parse()
            .expect("X-Stats-Lag is a number")
    }
}

/// An HTTP client without proxies.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// `Err` when the connection was refused or reset (not listening).
pub async fn try_send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| e.to_string())?.to_vec();
            Ok(Answer {
                status,
                headers,
                body,
            })
        }
        Err(e) if e.is_connect() => Err(e.to_string()),
        Err(e) => panic!("HTTP request failed: {e}"),
    }
}

/// The stats request of one client.
pub async fn stats(
    http: &reqwest::Client,
    base: &str,
    client: &str,
    token: &str,
    zones: Option<&str>,
) -> Answer {
    try_send(stats_request(http, base, client, token, zones))
        .await
        .expect("the service is listening")
}

/// The stats request of one client, to send.
pub fn stats_request(
    http: &reqwest::Client,
    base: &str,
    client: &str,
    token: &str,
    zones: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut body = serde_json::json!({ "apiToken": token });
    if let Some(zones) = zones {
        body["zones"] = Value::from(zones);
    }
    http.post(format!("{base}/api/{client}/v1/permits/stats"))
        .header("Accept", "application/json")
        .json(&body)
}

/// A GET.
pub async fn get(http: &reqwest::Client, url: String) -> Answer {
    try_send(http.get(url))
        .await
        .expect("the service is listening")
}

/// Sums the samples of `name` whose labels contain `filter`.
pub fn metric(page: &str, name: &str, filter: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable sample: {l}"))
        })
        .sum()
}

/// How a wait for the exact answer went.
#[derive(Debug, Default)]
pub struct Converged {
    /// Answers seen, by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Time until every client's answer was exact with `X-Stats-Lag: 0`.
    pub after: Duration,
    /// The final bodies, by client.
    pub bodies: HashMap<String, Vec<u8>>,
}

/// Polls every client's stats until each body equals the model's, byte for byte, with
/// `X-Stats-Lag: 0`. Any status other than 200 (or 503 while `allow_503`, i.e. before the
/// first ready) fails the test at once; so does the deadline, with the differences.
pub async fn wait_exact(
    service: &mut Service,
    http: &reqwest::Client,
    tokens: &HashMap<String, String>,
    model: &Model,
    within: Duration,
    allow_503: bool,
) -> Converged {
    let started = Instant::now();
    let mut seen = Converged::default();
    loop {
        service.assert_running();
        let mut done = true;
        let mut behind = Vec::new();
        for client in CLIENTS {
            let request = stats_request(http, &service.base, client, &tokens[client], None);
            let Ok(answer) = try_send(request).await else {
                // Not listening yet: only a start may see that.
                assert!(
                    allow_503 && seen.statuses.is_empty(),
                    "the service stopped listening"
                );
                done = false;
                break;
            };
            *seen.statuses.entry(answer.status).or_default() += 1;
            match answer.status {
                200 => {
                    let expected = model.body(client, None);
                    let exact = answer.text() == expected && answer.lag() == 0;
                    if exact {
                        seen.bodies.insert(client.to_owned(), answer.body.clone());
                    } else {
                        behind.push((client, answer.lag(), answer.text(), expected));
                    }
                    done &= exact;
                }
                503 if allow_503 && !seen.statuses.contains_key(&200) => done = false,
                other => panic!(
                    "{client}: the stats request answered {other}: {}",
                    answer.text()
                ),
            }
        }
        if done {
            seen.after = started.elapsed();
            return seen;
        }
        if started.elapsed() > within {
            let mut report = String::new();
            for (client, lag, got, want) in behind {
                let _ = writeln!(
                    report,
                    "{client} (X-Stats-Lag {lag}):\n  got  {got}\n  want {want}"
                );
            }
            panic!(
                "not exact within {within:?} (statuses {:?}):\n{report}",
                seen.statuses
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_exact`] for the workload's model within [`CONVERGE`].
pub async fn converge(
    service: &mut Service,
    http: &reqwest::Client,
    tokens: &HashMap<String, String>,
    workload: &Workload,
    allow_503: bool,
) -> Converged {
    wait_exact(service, http, tokens, &workload.model, CONVERGE, allow_503).await
}
