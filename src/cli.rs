//! `hls-relay call …`: operator commands on one call through the Stream API, the operations of Stream's HLS page.
//!
//! They act as the app (a server token from the configured secret) or, with `--user-token`, as a user, so that
//! Stream itself enforces that user's capabilities (`start-broadcast-call`, `stop-broadcast-call`). Credentials
//! and `stream.base_url` come from the same layering as `serve`. Text goes to people by default; `--json` prints
//! exactly one JSON document on stdout, failures included. Exit codes: 0 done, 1 Stream (or the network) said no,
//! 2 the command or the configuration is wrong.

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::{Config, ConfigError};
use crate::stream::api::{self, ApiError, StreamApi};
use crate::stream::call::CallId;

const API_FAILURE: u8 = 1;
const USAGE_FAILURE: u8 = 2;

#[derive(Args, Debug)]
pub struct CallArgs {
    #[command(subcommand)]
    pub command: CallCommand,
    /// TOML config file; the credentials and stream.base_url are read as for `serve`.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Act as this user (their JWT) instead of as the app, so Stream checks the user's capabilities. Only
    /// STREAM_API_KEY is needed then. The environment variable keeps the token out of process listings.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "STREAM_USER_TOKEN",
        hide_env_values = true
    )]
    pub user_token: Option<String>,
    /// Print one JSON document on stdout (errors too) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CallCommand {
    /// Show the call's state: backstage, broadcasting, playlist URL (--json: Stream's whole response).
    Get(Target),
    /// Start HLS broadcasting (needs the start-broadcast-call capability).
    StartHls(Target),
    /// Stop HLS broadcasting (needs the stop-broadcast-call capability).
    StopHls(Target),
    /// Take a call out of backstage, optionally starting HLS and recording with it.
    GoLive {
        #[command(flatten)]
        target: Target,
        /// Start HLS broadcasting as the call goes live.
        #[arg(long)]
        start_hls: bool,
        /// Start recording as the call goes live.
        #[arg(long)]
        start_recording: bool,
    },
    /// Put a live call back in backstage; its HLS broadcast stops with it.
    StopLive(Target),
}

#[derive(Args, Debug)]
pub struct Target {
    /// Call type, e.g. livestream.
    #[arg(value_name = "TYPE")]
    pub call_type: String,
    /// Call id.
    #[arg(value_name = "ID")]
    pub id: String,
}

impl CallCommand {
    fn target(&self) -> &Target {
        match self {
            CallCommand::Get(target)
            | CallCommand::StartHls(target)
            | CallCommand::StopHls(target)
            | CallCommand::StopLive(target)
            | CallCommand::GoLive { target, .. } => target,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            CallCommand::Get(_) => "get",
            CallCommand::StartHls(_) => "start-hls",
            CallCommand::StopHls(_) => "stop-hls",
            CallCommand::GoLive { .. } => "go-live",
            CallCommand::StopLive(_) => "stop-live",
        }
    }

    /// The capability Stream's broadcasting page says the command needs, for a 403 whose message does not name it.
    fn capability(&self) -> Option<&'static str> {
        match self {
            CallCommand::StartHls(_) => Some("start-broadcast-call"),
            CallCommand::StopHls(_) => Some("stop-broadcast-call"),
            _ => None,
        }
    }
}

/// Runs one `call` command and says how it went.
pub async fn run(args: CallArgs) -> ExitCode {
    let output = Output { json: args.json };
    let target = args.command.target();
    let call = match CallId::new(&target.call_type, &target.id) {
        Ok(call) => call,
        Err(error) => return output.usage_failure(&error),
    };
    let api = match connect(&args) {
        Ok(api) => api,
        Err(error) => return output.usage_failure(&error),
    };
    match execute(&args.command, &call, &api).await {
        Ok(report) => output.report(&call, report),
        Err(error) => output.api_failure(&args.command, &call, &error),
    }
}

/// The API client the configuration and `--user-token` describe.
fn connect(args: &CallArgs) -> Result<StreamApi, ConfigError> {
    let config = Config::load(args.config.as_deref())?;
    let stream = &config.stream;
    let Some(user_token) = &args.user_token else {
        let (api_key, api_secret) = config.credentials()?;
        return Ok(StreamApi::new(
            &stream.base_url,
            &api_key,
            &api_secret,
            stream.timeout,
        ));
    };
    // A user token is signed already, so the secret is not needed; the (public) API key still is.
    let api_key = stream
        .api_key
        .as_deref()
        .filter(|key| !key.is_empty())
        .ok_or(ConfigError::Invalid {
            key: "stream.api_key",
            reason: "the Stream API key is missing: set STREAM_API_KEY (from your app's page in the Stream \
                     dashboard, https://dashboard.getstream.io) or stream.api_key in the config file"
                .into(),
        })?;
    Ok(StreamApi::with_user_token(
        &stream.base_url,
        api_key,
        user_token,
        stream.timeout,
    ))
}

/// What a command that Stream accepted has to show.
enum Report {
    /// `get`: Stream's response.
    State(Value),
    /// An action: what happened, and the call's state read afterwards (or why it could not be read).
    Done {
        headline: String,
        after: Result<Value, ApiError>,
    },
}

async fn execute(
    command: &CallCommand,
    call: &CallId,
    api: &StreamApi,
) -> Result<Report, ApiError> {
    let headline = match command {
        CallCommand::Get(_) => return api.get_call_raw(call).await.map(Report::State),
        CallCommand::StartHls(_) => {
            api.start_broadcasting(call).await?;
            format!("HLS broadcasting started for {call}")
        }
        CallCommand::StopHls(_) => {
            api.stop_broadcasting(call).await?;
            format!("HLS broadcasting stopped for {call}")
        }
        CallCommand::GoLive {
            start_hls,
            start_recording,
            ..
        } => {
            api.go_live(call, *start_hls, *start_recording).await?;
            format!(
                "{call} is live{}",
                match (start_hls, start_recording) {
                    (true, true) => ", with HLS broadcasting and recording started",
                    (true, false) => ", with HLS broadcasting started",
                    (false, true) => ", with recording started",
                    (false, false) => "",
                }
            )
        }
        CallCommand::StopLive(_) => {
            api.stop_live(call).await?;
            format!("{call} is back in backstage; its HLS broadcast stopped with the live")
        }
    };
    // The action's reply does not reliably carry the playlist URL; the call's state does.
    let after = api.get_call_raw(call).await;
    Ok(Report::Done { headline, after })
}

/// The call's state for people, from a get-call response.
fn describe(call: &CallId, response: &Value) -> Result<String, ApiError> {
    let state = api::call_state(response)?;
    let yes_no = |flag: bool| if flag { "yes" } else { "no" };
    let backstage = response["call"]["backstage"]
        .as_bool()
        .map_or("unknown", yes_no);
    let playlist = match (&state.playlist_url, state.broadcasting) {
        (Some(url), _) => url.to_string(),
        (None, true) => format!(
            "not published yet (try `hls-relay call get {} {}` shortly)",
            call.kind(),
            call.id()
        ),
        (None, false) => "none (not broadcasting)".into(),
    };
    Ok(format!(
        "call          {call}\nbackstage     {backstage}\nbroadcasting  {}\nplaylist URL  {playlist}",
        yes_no(state.broadcasting)
    ))
}

/// Where and in which form results and failures go.
struct Output {
    json: bool,
}

impl Output {
    fn report(&self, call: &CallId, report: Report) -> ExitCode {
        match (report, self.json) {
            (Report::State(response), true) => stdout(&response),
            (Report::State(response), false) => match describe(call, &response) {
                Ok(text) => stdout(text),
                Err(error) => return self.api_failure_message(&format!("call get {call}"), &error),
            },
            (Report::Done { after, .. }, true) => match after {
                Ok(response) => stdout(json!({"ok": true, "call": response["call"]})),
                Err(error) => {
                    stdout(json!({"ok": true, "call": null, "state_error": error_json(&error)}))
                }
            },
            (Report::Done { headline, after }, false) => {
                stdout(headline);
                match after.and_then(|response| describe(call, &response)) {
                    Ok(text) => stdout(text),
                    Err(error) => stderr(format!(
                        "hls-relay: warning: could not read the call's state afterwards: {error}"
                    )),
                }
            }
        }
        ExitCode::SUCCESS
    }

    fn api_failure(&self, command: &CallCommand, call: &CallId, error: &ApiError) -> ExitCode {
        let code = self.api_failure_message(&format!("call {} {call}", command.name()), error);
        let unnamed_capability = command
            .capability()
            .filter(|capability| !error.message().contains(capability));
        if let (false, Some(403), Some(capability)) =
            (self.json, error.status(), unnamed_capability)
        {
            stderr(format!(
                "hls-relay: {} needs the {capability} capability in the call",
                command.name()
            ));
        }
        code
    }

    fn api_failure_message(&self, what: &str, error: &ApiError) -> ExitCode {
        if self.json {
            stdout(json!({ "error": error_json(error) }));
        } else {
            stderr(format!("hls-relay: {what} failed: {error}"));
        }
        ExitCode::from(API_FAILURE)
    }

    fn usage_failure(&self, error: &dyn Display) -> ExitCode {
        if self.json {
            stdout(json!({"error": {"status": null, "code": null, "message": error.to_string()}}));
        } else {
            stderr(format!("hls-relay: {error}"));
        }
        ExitCode::from(USAGE_FAILURE)
    }
}

/// `{"status": 403, "code": 17, "message": "<Stream's message>"}`; status and code are null when Stream did not
/// answer or gave none.
fn error_json(error: &ApiError) -> Value {
    json!({"status": error.status(), "code": error.code(), "message": error.message()})
}

// A closed pipe (`hls-relay call get … | head -1`) is the reader's choice, not a failure worth a panic, so write
// errors are ignored.
fn stdout(text: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn stderr(text: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallId {
        CallId::new("livestream", "abc").unwrap()
    }

    #[test]
    fn describes_a_broadcasting_call_with_its_playlist() {
        let response = json!({"call": {"cid": "livestream:abc", "backstage": false,
            "egress": {"broadcasting": true, "hls": {"playlist_url": "https://cdn.example.com/a/master.m3u8"}}}});
        let text = describe(&call(), &response).unwrap();
        assert_eq!(
            text,
            "call          livestream:abc\nbackstage     no\nbroadcasting  yes\n\
             playlist URL  https://cdn.example.com/a/master.m3u8"
        );
    }

    #[test]
    fn says_why_there_is_no_playlist() {
        let idle =
            json!({"call": {"backstage": true, "egress": {"broadcasting": false, "hls": null}}});
        let text = describe(&call(), &idle).unwrap();
        assert!(text.contains("backstage     yes"), "{text}");
        assert!(text.ends_with("none (not broadcasting)"), "{text}");

        let starting =
            json!({"call": {"egress": {"broadcasting": true, "hls": {"playlist_url": ""}}}});
        let text = describe(&call(), &starting).unwrap();
        assert!(text.contains("backstage     unknown"), "{text}");
        assert!(text.contains("not published yet"), "{text}");

        assert!(describe(&call(), &json!({"nope": 1})).is_err());
    }
}
