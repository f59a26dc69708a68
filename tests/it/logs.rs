//! The binary's logs as an operator's pipeline reads them: `--log-format json` writes one JSON
//! object per line, with level, timestamp and message, and never a token.

use serde_json::Value;

use crate::support::service::Service;

#[test]
fn json_logs_are_objects_with_level_and_message_and_never_a_token() {
    let mut service = Service::serve_live(&["--log-format", "json"], &["--demo"]);
    service.wait_ready();
    let token = service.demo_token();
    let stats = "/api/OC-TOMA/v1/permits/stats";
    let wrong = "wrong-token-0123456789";
    for body in [
        format!("{{\"apiToken\":\"{token}\",\"zones\":\"Lot 01\"}}"),
        format!("{{\"apiToken\":\"{wrong}\"}}"),
    ] {
        assert!(service.request("POST", stats, &body).is_some());
    }
    let (_, stderr) = service.stop();

    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(object["level"].is_string(), "no level: {line}");
        assert!(object["timestamp"].is_string(), "no timestamp: {line}");
        let message = object["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.message: {line}"));
        messages.push(message.to_owned());
        assert!(!line.contains(&token), "the demo token was logged: {line}");
        assert!(
            !line.contains(wrong),
            "a request's token was logged: {line}"
        );
    }
    let said = |what: &str| messages.iter().any(|m| m.contains(what));
    assert!(said("replay"), "no replay line in {messages:?}");
    assert!(said("ready"), "no ready line in {messages:?}");
    assert!(said("listening"), "no listening line in {messages:?}");
}
