//! The Stream-compatible Video API: get call, start/stop broadcasting, go live/stop live, end call.
//!
//! Authentication follows Stream: `api_key` query parameter, `Authorization` JWT (HS256, the API secret) with
//! `stream-auth-type: jwt`. Server tokens may do anything; user tokens get the capabilities of their role in the
//! call (see `roles`). State changes go through `Shared::apply`, which emits the events.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::roles::{self, Roles};
use super::state::{Call, Op, Shared};

const MORE_INFO: &str = "https://getstream.io/video/docs/api/errors/";

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v2/video/call/{call_type}/{id}", get(get_call))
        .route(
            "/api/v2/video/call/{call_type}/{id}/{action}",
            post(call_action),
        )
}

/// A failed request, before it is wrapped in Stream's error shape.
#[derive(Debug, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    /// Stream's own error code (4 input, 5 authentication, 16 not found, 17 not allowed, 40 token expired,
    /// 43 token signature invalid, 2 API key).
    code: u32,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn unauthorized(code: u32, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    fn call_not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            16,
            format!("Can't find call with id {id}"),
        )
    }

    fn call_ended(call_type: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            4,
            format!("call {call_type}:{id} has ended"),
        )
    }
}

/// Stream reports how long it worked on a request; so does the simulator.
fn duration(started: Instant) -> String {
    format!("{:.2}ms", started.elapsed().as_secs_f64() * 1000.0)
}

/// Wraps a handler's outcome: success objects get `duration`, errors get Stream's error shape, with the message
/// prefixed by the operation as Stream does (`GetCall failed with error: "…"`).
fn respond(operation: &str, outcome: Result<Value, ApiError>, started: Instant) -> Response {
    match outcome {
        Ok(mut body) => {
            if let Some(object) = body.as_object_mut() {
                object.insert("duration".into(), duration(started).into());
            }
            Json(body).into_response()
        }
        Err(e) => {
            let body = json!({
                "code": e.code,
                "message": format!("{operation} failed with error: \"{}\"", e.detail),
                "StatusCode": e.status.as_u16(),
                "duration": duration(started),
                "more_info": MORE_INFO,
                "details": [],
            });
            (e.status, Json(body)).into_response()
        }
    }
}

/// Who is calling, from the token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Caller {
    Server,
    User(String),
}

impl Caller {
    /// What the caller may do in the call: everything for server tokens, else its role's capabilities.
    fn capabilities(&self, roles: &Roles, call_type: &str, id: &str) -> &'static [&'static str] {
        match self {
            Caller::Server => roles::HOST_CAPABILITIES,
            Caller::User(user) => roles::capabilities(&roles.role(call_type, id, user)),
        }
    }

    fn require(
        &self,
        roles: &Roles,
        capability: &str,
        call_type: &str,
        id: &str,
    ) -> Result<(), ApiError> {
        match self {
            Caller::Server => Ok(()),
            Caller::User(user) => {
                let role = roles.role(call_type, id, user);
                if roles::capabilities(&role).contains(&capability) {
                    return Ok(());
                }
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    17,
                    format!(
                        "User '{user}' with role '{role}' is not allowed to perform action {capability} in scope \
                         'video:{call_type}'"
                    ),
                ))
            }
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    server: Option<bool>,
    #[serde(default)]
    user_id: Option<String>,
}

/// Checks the API key and the token the way Stream does, in that order.
fn authenticate(
    shared: &Shared,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let api_key = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "api_key")
            .map(|(_, v)| v.into_owned())
    });
    match api_key {
        None => return Err(ApiError::unauthorized(2, "api_key not found")),
        Some(key) if key != shared.api_key => {
            return Err(ApiError::unauthorized(2, "api_key not valid"));
        }
        Some(_) => {}
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(kind) = header("stream-auth-type")
        && !kind.eq_ignore_ascii_case("jwt")
    {
        return Err(ApiError::unauthorized(
            5,
            format!("stream-auth-type {kind} is not supported"),
        ));
    }
    let Some(authorization) = header("authorization").filter(|v| !v.is_empty()) else {
        return Err(ApiError::unauthorized(5, "JWTAuth error: token is missing"));
    };
    // Stream wants the bare token; a `Bearer ` prefix is a common client mistake it is lenient with here.
    let token = match authorization.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => authorization[7..].trim(),
        _ => authorization,
    };
    let claims = decode_token(token, &shared.api_secret, &shared.api_key)?;
    // A token that names no user is a server token: the official SDKs sign empty claims (`{}`, perhaps with
    // `iat`), older ones `{"server": true}`.
    match (claims.server, claims.user_id) {
        (Some(true), _) | (None, None) => Ok(Caller::Server),
        (_, Some(user)) if !user.is_empty() => Ok(Caller::User(user)),
        _ => Err(ApiError::unauthorized(
            5,
            "JWTAuth error: token has no user_id and is not a server token",
        )),
    }
}

fn decode_token(token: &str, secret: &str, api_key: &str) -> Result<Claims, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Stream's tokens need not expire (server tokens usually do not); `exp` is checked when present.
    validation.required_spec_claims.clear();
    validation.validate_aud = false;
    validation.leeway = 0;
    let key = DecodingKey::from_secret(secret.as_bytes());
    match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::ExpiredSignature => {
                ApiError::unauthorized(40, "JWTAuth error: token has expired")
            }
            ErrorKind::InvalidSignature => ApiError::unauthorized(
                43,
                format!(
                    "JWTAuth error: signature is not valid. Make sure the token is created using the secret for \
                     API key \"{api_key}\""
                ),
            ),
            _ => ApiError::unauthorized(5, format!("JWTAuth error: token is not valid: {e}")),
        }),
    }
}

/// The `call` object of Stream's responses and events, including fields the relay must ignore. It carries every
/// field the official SDKs' models require (their `CallResponse`), with the types they expect, and its times in
/// the simulator's `TimeFormat`.
pub fn call_object(shared: &Shared, call: &Call, call_type: &str, id: &str) -> Value {
    let base_url = shared.base_url.as_str();
    let time = |ms: i64| shared.time_format.ms(ms);
    // Stream does not document the values of `status`; "running" is what a live broadcast would say.
    let hls = call
        .live_playlist_url(base_url, call_type, id)
        .map(|url| json!({ "playlist_url": url, "status": "running" }));
    let broadcast = call.broadcast.as_ref();
    let session = (call.live_started_ms.is_some()
        || call.broadcasting()
        || call.ended_ms.is_some())
    .then(|| {
        let started = call.live_started_ms.unwrap_or(call.created_ms);
        json!({
            "id": broadcast.map(|b| b.session.as_str()).unwrap_or("session-0"),
            "started_at": time(started),
            "live_started_at": call.live_started_ms.map(time),
            "live_ended_at": call.live_ended_ms.map(time),
            "ended_at": call.ended_ms.map(time),
            "participants": [],
            "participants_count_by_role": {},
            "anonymous_participant_count": 0,
            "accepted_by": {}, "rejected_by": {}, "missed_by": {},
        })
    });
    let created = time(call.created_ms);
    json!({
        "cid": format!("{call_type}:{id}"),
        "type": call_type,
        "id": id,
        "current_session_id": broadcast.map(|b| b.session.as_str()).unwrap_or(""),
        "created_by": user_object("host-sim", "Simulated host", &created),
        "created_at": created,
        "updated_at": created,
        "backstage": call.backstage,
        "blocked_user_ids": [],
        "custom": {},
        "egress": {
            "broadcasting": call.broadcasting(),
            "hls": hls,
            "rtmps": [],
        },
        "ingress": {
            "rtmp": { "address": format!("rtmps://ingress.sim.invalid:443/{call_type}.{id}") },
            "srt": { "address": format!("srt://ingress.sim.invalid:7001?streamid={call_type}.{id}") },
            "whip": { "address": format!("https://ingress.sim.invalid/whip/{call_type}.{id}") },
        },
        "recording": false,
        "transcribing": false,
        "captioning": false,
        "translating": false,
        "session": session,
        "settings": settings(call.setup.backstage),
        "starts_at": null,
        "ended_at": call.ended_ms.map(time),
        "team": null,
        "thumbnails": null,
    })
}

/// A `UserResponse` with every field the SDKs require.
fn user_object(id: &str, name: &str, created: &Value) -> Value {
    json!({
        "id": id, "name": name, "role": "user", "language": "", "teams": [], "custom": {},
        "banned": false, "shadow_banned": false, "online": false, "invisible": false, "blocked_user_ids": [],
        "created_at": created, "updated_at": created,
    })
}

/// The call's `settings`: a `livestream` call type's, complete, because the SDKs' models require every group.
fn settings(backstage: bool) -> Value {
    let layout = json!({ "name": "spotlight", "external_app_url": "", "external_css_url": "" });
    json!({
        "audio": {
            "access_request_enabled": false, "default_device": "speaker", "hifi_audio_enabled": false,
            "mic_default_on": false, "opus_dtx_enabled": true, "redundant_coding_enabled": true,
            "speaker_default_on": true,
        },
        "backstage": { "enabled": backstage },
        "broadcasting": {
            "enabled": true,
            "hls": { "enabled": true, "auto_on": false, "quality_tracks": ["360p", "180p"], "layout": layout },
            "rtmp": { "enabled": false, "quality": "720p", "layout": layout },
        },
        "encryption": { "mode": "disabled" },
        "frame_recording": { "mode": "disabled", "capture_interval_in_seconds": 3 },
        "geofencing": { "names": [] },
        "individual_recording": { "mode": "disabled" },
        "limits": { "max_participants_exclude_roles": [] },
        "raw_recording": { "mode": "disabled" },
        "recording": { "mode": "available", "audio_only": false, "quality": "720p", "layout": layout },
        "ring": { "auto_cancel_timeout_ms": 30000, "incoming_call_timeout_ms": 15000, "missed_call_timeout_ms": 15000 },
        "screensharing": { "enabled": true, "access_request_enabled": false },
        "session": { "inactivity_timeout_seconds": 30 },
        "thumbnails": { "enabled": false },
        "transcription": { "mode": "disabled", "closed_caption_mode": "disabled", "language": "auto" },
        "video": {
            "enabled": true, "access_request_enabled": false, "camera_default_on": true, "camera_facing": "front",
            "target_resolution": { "width": 1280, "height": 720 },
        },
    })
}

fn call_response(
    shared: &Shared,
    call: &Call,
    caller: &Caller,
    call_type: &str,
    id: &str,
) -> Value {
    let created = shared.time_format.ms(call.created_ms);
    let member = |user_id: &str, role: &str| {
        json!({
            "user_id": user_id, "role": role, "custom": {},
            "user": user_object(user_id, user_id, &created),
            "created_at": created, "updated_at": created,
        })
    };
    let mut members = vec![member("host-sim", "host")];
    members.extend(
        shared
            .roles
            .members(call_type, id)
            .iter()
            .map(|(user, role)| member(user, role)),
    );
    json!({
        "call": call_object(shared, call, call_type, id),
        "members": members,
        "own_capabilities": caller.capabilities(&shared.roles, call_type, id),
        "blocked_users": [],
    })
}

async fn get_call(
    State(shared): State<Arc<Shared>>,
    Path((call_type, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    shared.counters.count_get_call();
    let outcome = authenticate(&shared, query.as_deref(), &headers).and_then(|caller| {
        shared
            .with_call(&call_type, &id, |call| {
                call_response(&shared, call, &caller, &call_type, &id)
            })
            .ok_or_else(|| ApiError::call_not_found(&id))
    });
    respond("GetCall", outcome, started)
}

/// The POST operations on a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    StartBroadcasting,
    StopBroadcasting,
    GoLive,
    StopLive,
    EndCall,
}

impl Action {
    fn from_path(segment: &str) -> Option<Action> {
        Some(match segment {
            "start_broadcasting" => Action::StartBroadcasting,
            "stop_broadcasting" => Action::StopBroadcasting,
            "go_live" => Action::GoLive,
            "stop_live" => Action::StopLive,
            "mark_ended" => Action::EndCall,
            _ => return None,
        })
    }

    /// The name Stream puts in its error messages.
    fn operation(self) -> &'static str {
        match self {
            Action::StartBroadcasting => "StartHLSBroadcasting",
            Action::StopBroadcasting => "StopHLSBroadcasting",
            Action::GoLive => "GoLive",
            Action::StopLive => "StopLive",
            Action::EndCall => "EndCall",
        }
    }

    fn capability(self) -> &'static str {
        match self {
            Action::StartBroadcasting => "start-broadcast-call",
            Action::StopBroadcasting => "stop-broadcast-call",
            Action::GoLive | Action::StopLive => "update-call",
            Action::EndCall => "end-call",
        }
    }
}

/// The body of `go_live` and `stop_live`, of which the simulator reads only the HLS flags. Options, because the
/// SDKs may send `null` for what is not set.
#[derive(Deserialize, Default)]
struct LiveRequest {
    #[serde(default)]
    start_hls: Option<bool>,
    /// `stop_live` keeps HLS running when this is true.
    #[serde(default)]
    continue_hls: Option<bool>,
}

async fn call_action(
    State(shared): State<Arc<Shared>>,
    Path((call_type, id, action)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    shared.counters.count_action();
    let Some(action) = Action::from_path(&action) else {
        let error = ApiError::new(
            StatusCode::NOT_FOUND,
            4,
            format!("unknown call action {action}"),
        );
        return respond("CallAction", Err(error), started);
    };
    let outcome = perform(
        &shared,
        action,
        &call_type,
        &id,
        query.as_deref(),
        &headers,
        &body,
    );
    respond(action.operation(), outcome, started)
}

fn perform(
    shared: &Shared,
    action: Action,
    call_type: &str,
    id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    let caller = authenticate(shared, query, headers)?;
    let live_actions = [Action::GoLive, Action::StopLive];
    let request: LiveRequest = if live_actions.contains(&action) && !body.trim_ascii().is_empty() {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                4,
                format!("invalid request body: {e}"),
            )
        })?
    } else {
        LiveRequest::default()
    };
    let base = shared.base_url.as_str();
    shared
        .with_call(call_type, id, |call| {
            caller.require(&shared.roles, action.capability(), call_type, id)?;
            let op = match action {
                Action::StartBroadcasting => Op::StartBroadcasting,
                Action::StopBroadcasting => Op::StopBroadcasting,
                Action::GoLive => Op::GoLive {
                    start_hls: request.start_hls.unwrap_or(false),
                },
                Action::StopLive => Op::StopLive {
                    continue_hls: request.continue_hls.unwrap_or(false),
                },
                Action::EndCall => Op::End,
            };
            shared
                .apply(call, call_type, id, op)
                .map_err(|_| ApiError::call_ended(call_type, id))?;
            Ok(match action {
                Action::StartBroadcasting => {
                    let url = call.live_playlist_url(base, call_type, id);
                    json!({ "playlist_url": url.unwrap_or_default() })
                }
                Action::GoLive | Action::StopLive => {
                    json!({ "call": call_object(shared, call, call_type, id) })
                }
                Action::StopBroadcasting | Action::EndCall => json!({}),
            })
        })
        .unwrap_or_else(|| Err(ApiError::call_not_found(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::CallSetup;
    use jsonwebtoken::{EncodingKey, Header};

    fn shared() -> Shared {
        Shared::new("key".into(), "secret".into(), "http://sim".into())
    }

    fn token(claims: Value, secret: &str) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap_or_default()
    }

    fn headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = token.parse() {
            headers.insert("authorization", value);
        }
        headers.insert("stream-auth-type", "jwt".parse().expect("static header"));
        headers
    }

    fn auth(token: &str, query: Option<&str>) -> Result<Caller, ApiError> {
        authenticate(&shared(), query, &headers(token))
    }

    #[test]
    fn tokens_are_checked_like_stream_does() {
        let server = token(json!({"server": true}), "secret");
        let q = Some("api_key=key");
        assert_eq!(auth(&server, q), Ok(Caller::Server));
        assert_eq!(auth(&format!("Bearer {server}"), q), Ok(Caller::Server));
        assert_eq!(auth(&server, None).map_err(|e| e.code), Err(2));
        assert_eq!(
            auth(&server, Some("api_key=other")).map_err(|e| e.code),
            Err(2)
        );
        let forged = token(json!({"server": true}), "other");
        assert_eq!(
            auth(&forged, q).map_err(|e| (e.status, e.code)),
            Err((StatusCode::UNAUTHORIZED, 43))
        );
        let expired = token(json!({"user_id": "host1", "exp": 1_000_000}), "secret");
        assert_eq!(auth(&expired, q).map_err(|e| e.code), Err(40));
        assert_eq!(auth("not-a-jwt", q).map_err(|e| e.code), Err(5));
        assert_eq!(auth("", q).map_err(|e| e.code), Err(5));
        // What the official SDKs sign: no claims, or only `iat`.
        assert_eq!(auth(&token(json!({}), "secret"), q), Ok(Caller::Server));
        assert_eq!(
            auth(&token(json!({"iat": 1}), "secret"), q),
            Ok(Caller::Server)
        );
        let not_server = token(json!({"server": false}), "secret");
        assert_eq!(auth(&not_server, q).map_err(|e| e.code), Err(5));
        let nobody = token(json!({"user_id": ""}), "secret");
        assert_eq!(auth(&nobody, q).map_err(|e| e.code), Err(5));
        let user = token(
            json!({"user_id": "alice", "exp": 4_000_000_000u64}),
            "secret",
        );
        assert_eq!(auth(&user, q), Ok(Caller::User("alice".into())));
    }

    #[test]
    fn only_hosts_and_admins_may_broadcast() {
        let roles = Roles::default();
        roles.add_user("root", "admin");
        roles.add_member("livestream", "x", "carol", "host");
        let allowed = |caller: &Caller, capability: &str| {
            caller
                .require(&roles, capability, "livestream", "x")
                .is_ok()
        };
        for user in ["host-1", "root", "carol"] {
            let caller = Caller::User(user.into());
            for cap in [
                "start-broadcast-call",
                "stop-broadcast-call",
                "update-call",
                "end-call",
            ] {
                assert!(allowed(&caller, cap), "{user} {cap}");
            }
        }
        assert!(allowed(&Caller::Server, "stop-broadcast-call"));
        assert!(
            Caller::User("carol".into())
                .require(&roles, "end-call", "livestream", "y")
                .is_err(),
            "but a plain user elsewhere"
        );

        let viewer = Caller::User("bob".into());
        let denied = viewer
            .require(&roles, "start-broadcast-call", "livestream", "x")
            .expect_err("viewer denied");
        assert_eq!((denied.status, denied.code), (StatusCode::FORBIDDEN, 17));
        assert_eq!(
            denied.detail,
            "User 'bob' with role 'user' is not allowed to perform action start-broadcast-call in scope \
             'video:livestream'"
        );
        assert!(allowed(&viewer, "read-call"));
    }

    #[test]
    fn call_object_reports_egress_state() {
        let shared = shared();
        shared.add_call("livestream", "abc", CallSetup::default());
        let object = shared
            .with_call("livestream", "abc", |c| {
                call_object(&shared, c, "livestream", "abc")
            })
            .unwrap_or_default();
        assert_eq!(object["cid"], "livestream:abc");
        assert_eq!(object["egress"]["broadcasting"], true);
        assert!(
            object["egress"]["hls"]["playlist_url"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://sim/cdn/"))
        );
        assert_eq!(object["egress"]["rtmps"], json!([]));
        assert!(object["session"].is_object());
        assert_eq!(object["ended_at"], Value::Null);

        shared.with_call("livestream", "abc", |c| c.stop_broadcasting(&shared.clock));
        let object = shared
            .with_call("livestream", "abc", |c| {
                call_object(&shared, c, "livestream", "abc")
            })
            .unwrap_or_default();
        assert_eq!(object["egress"]["broadcasting"], false);
        assert_eq!(object["egress"]["hls"], Value::Null);
    }
}
