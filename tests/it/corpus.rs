//! The corpus: the interesting inputs kept in `tests/corpus/` (found by `fuzz_http.rs`, or
//! written by hand), each a raw request replayed over a socket to the real server, with its
//! expected status (and ErrorCode) in its file name; no answer may echo a token or another
//! client's data, and none may be a 5xx.

use std::time::Duration;

use permit_stats::api::Limits;

use crate::support::server::{self, OTHER_CLIENT_TOKEN, SECOND_TOKEN, TOKEN, exchange, statuses};

/// Turns a corpus file into bytes to send: `{{TOKEN}}`, `{{SECOND_TOKEN}}`,
/// `{{OTHER_CLIENT_TOKEN}}` and `{{PAD:n}}` (n × `x`) are filled in, the head's line ends become
/// CRLF (unless the name says `bare-lf`), `{{CRLF}}` in the body becomes CRLF, and `{{LENGTH}}`
/// becomes the body's length. A file whose body ends with a line end keeps it.
fn render(name: &str, text: &str) -> Vec<u8> {
    let mut text = text
        .replace("{{TOKEN}}", TOKEN)
        .replace("{{SECOND_TOKEN}}", SECOND_TOKEN)
        .replace("{{OTHER_CLIENT_TOKEN}}", OTHER_CLIENT_TOKEN);
    while let Some(start) = text.find("{{PAD:") {
        let end = text[start..].find("}}").expect("closed placeholder") + start;
        let n: usize = text[start + 6..end].parse().expect("a pad length");
        text.replace_range(start..end + 2, &"x".repeat(n));
    }
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let body = body.replace("{{CRLF}}", "\r\n");
    let line_end = if name.contains("bare-lf") {
        "\n"
    } else {
        "\r\n"
    };
    let head = head.replace('\n', line_end);
    let head = head.replace("{{LENGTH}}", &body.len().to_string());
    format!("{head}{line_end}{line_end}{body}").into_bytes()
}

#[test]
fn the_corpus_gets_its_expected_answers() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(server::serve(
        server::fixture(true).state,
        Limits {
            header_read_timeout: Duration::from_secs(2),
            body_read_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
    ));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/corpus exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "http"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is there");
    let mut failures = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        // <status>-<ErrorCode or "x">-<what>.http: the last answer's status (000: closed without
        // an answer) and an ErrorCode that must be in what was sent back.
        let mut parts = name.splitn(3, '-');
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("a status");
        let code: Option<i64> = parts.next().and_then(|c| c.parse().ok());
        let text = std::fs::read_to_string(file).expect("readable");
        let received = runtime.block_on(exchange(server.addr, &render(&name, &text)));
        let answer = String::from_utf8_lossy(&received).into_owned();
        let got = statuses(&received);
        let ok = match status {
            0 => got.is_empty(),
            _ => got.last() == Some(&status),
        } && code.is_none_or(|code| answer.contains(&format!("\"ErrorCode\":{code}")))
            && !answer.contains(TOKEN)
            && !answer.contains(server::OTHER_CLIENT_MARKER)
            && got.iter().all(|s| *s < 500);
        if !ok {
            failures.push(format!("{name}: got {got:?}\n{answer}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
