//! Everything the relay reads from a request or a webhook before it trusts it: webhook signatures and bodies,
//! viewer tokens (JWT, HS256), `_HLS_` delivery directives and call ids.
//!
//! The first byte picks what the rest of the input is (mod 4):
//! - 0: an event delivery, `body 0xFF signature`: `events::parse(body)`, the webhook body's and the SQS message's
//!   decoding (`payload`, gzip bounded) must not panic, and `signature_is_valid` must be false (a random input
//!   cannot forge an HMAC-SHA256);
//! - 1: a viewer token (lossy UTF-8): `Gate::admit` must not panic and must refuse it (token mode; the corpus holds
//!   tokens signed with other secrets, expired ones, `alg: none` ones…), and a public gate lets it in untouched;
//! - 2: a request query for `blocking::Directives::parse`;
//! - 3: a `type:id` call cid for `CallId::from_cid`.
#![no_main]

use std::sync::LazyLock;

use hls_relay::http::access::{AccessConfig, AccessMode, Gate};
use hls_relay::hls::blocking::Directives;
use hls_relay::stream::call::CallId;
use hls_relay::events::{self, payload, webhook};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

const WEBHOOK_SECRET: &[u8] = b"fuzz-webhook-secret";

static TOKEN_GATE: LazyLock<Gate> = LazyLock::new(|| {
    let config = AccessConfig {
        mode: AccessMode::Token,
        token_secret: Some("fuzz-token-secret".into()),
    };
    Gate::new(&config, None)
});
static PUBLIC_GATE: LazyLock<Gate> =
    LazyLock::new(|| Gate::new(&AccessConfig::default(), Some("fuzz-token-secret")));
static CALL: LazyLock<CallId> = LazyLock::new(|| CallId::new("livestream", "fuzz").unwrap());

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            let (body, signature) = match rest.iter().position(|&b| b == 0xFF) {
                Some(split) => (&rest[..split], &rest[split + 1..]),
                None => (rest, &[][..]),
            };
            let _ = payload::webhook_json(body, 64 * 1024);
            let _ = payload::queue_message_json(&String::from_utf8_lossy(body), 64 * 1024);
            if let Ok(event) = events::parse(body, OffsetDateTime::UNIX_EPOCH) {
                let _ = events::type_label(&event.kind);
                let _ = event.action.label();
                let _ = event.call.to_string();
            }
            let signature = String::from_utf8_lossy(signature);
            assert!(
                !webhook::signature_is_valid(WEBHOOK_SECRET, body, &signature),
                "a forged webhook signature passed: {signature:?}"
            );
        }
        1 => {
            let token = String::from_utf8_lossy(rest);
            let admitted = TOKEN_GATE.admit(&CALL, Some(&token));
            assert!(
                admitted.is_err(),
                "a forged viewer token was admitted: {token:?}"
            );
            assert!(matches!(PUBLIC_GATE.admit(&CALL, Some(&token)), Ok(None)));
        }
        2 => {
            let query = String::from_utf8_lossy(rest);
            if let Ok(directives) = Directives::parse(Some(&query)) {
                let _ = directives.query();
            }
        }
        _ => {
            let cid = String::from_utf8_lossy(rest);
            if let Ok(call) = CallId::from_cid(&cid) {
                assert_eq!(call.to_string(), cid);
            }
        }
    }
});
