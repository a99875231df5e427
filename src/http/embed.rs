//! The web embed: `GET /embed/{type}/{id}` is a small self-contained page (a `<video>` and hls.js) that waits
//! for the call's broadcast through the SSE state stream, plays it through the relay, and says when it has not
//! started, has ended or failed. Sites put it in an `<iframe>`.
//!
//! Everything the page loads comes from the relay by default: its markup, style and script live in
//! `src/http/embed/` and hls.js in `src/http/embed/vendor/` ([`hls_js`]), all compiled in: no build step, no files
//! to ship, no third party. `embed.hls_js_url` opts into a CDN's hls.js instead, `embed.hls_js_path` into a local
//! file. Only the call and the hls.js location are interpolated into the page, escaped for where they land.

pub mod hls_js;

use std::path::PathBuf;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::config::ConfigError;
use crate::error::RelayError;
use crate::relay::Relay;
use crate::stream::call::CallId;

const PAGE: &str = include_str!("embed/page.html");
const STYLE: &str = include_str!("embed/style.css");
const SCRIPT: &str = include_str!("embed/player.js");

/// The inline style and script are allowed by hash rather than `'unsafe-inline'`: nothing else inline runs,
/// even if something ever slipped through the escaping.
static STYLE_HASH: LazyLock<String> = LazyLock::new(|| csp_hash(STYLE));
static SCRIPT_HASH: LazyLock<String> = LazyLock::new(|| csp_hash(SCRIPT));

/// `[embed]` in the config file. Neither key set (the default): the page loads the hls.js built into the relay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    /// hls.js from elsewhere, e.g. a CDN: an http(s) URL, whose origin the page's Content-Security-Policy then
    /// allows, or a path on the relay's own origin.
    pub hls_js_url: Option<String>,
    /// A local hls.js file, served at `/embed/hls.min.js` and used by the page instead of the built-in one or
    /// `hls_js_url`.
    pub hls_js_path: Option<PathBuf>,
}

impl EmbedConfig {
    /// Start-up checks, for `Config::validate`: a usable URL, and a local file that exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(hls_js_url) = &self.hls_js_url {
            let usable = match Url::parse(hls_js_url) {
                Ok(url) => matches!(url.scheme(), "http" | "https"),
                // A path on the relay's own origin (`/static/hls.min.js`), not `//host/...`.
                Err(_) => hls_js_url.starts_with('/') && !hls_js_url.starts_with("//"),
            };
            if !usable {
                return Err(ConfigError::Invalid {
                    key: "embed.hls_js_url",
                    reason: format!(
                        "`{hls_js_url}` is neither an http(s) URL nor a path starting with /"
                    ),
                });
            }
        }
        if let Some(path) = &self.hls_js_path
            && !path.is_file()
        {
            return Err(ConfigError::Invalid {
                key: "embed.hls_js_path",
                reason: format!("{} is not a readable file", path.display()),
            });
        }
        Ok(())
    }

    /// What the page's `<script src>` says.
    fn script_src(&self) -> &str {
        match (&self.hls_js_path, &self.hls_js_url) {
            (Some(_), _) => hls_js::FROM_PAGE,
            (None, Some(url)) => url,
            (None, None) => hls_js::VERSIONED_FROM_PAGE,
        }
    }

    /// The CSP source that allows hls.js: its origin when it comes from elsewhere.
    fn script_origin(&self) -> Option<String> {
        match (&self.hls_js_path, &self.hls_js_url) {
            (None, Some(url)) => foreign_origin(url),
            _ => None,
        }
    }
}

/// The embed routes, merged into the relay's router.
pub fn routes() -> Router<Relay> {
    Router::new()
        .route(hls_js::VERSIONED_ROUTE, get(hls_js::versioned))
        .route(hls_js::ROUTE, get(hls_js::unversioned))
        .route("/embed/{type}/{id}", get(page))
}

/// `GET /embed/{type}/{id}`: the player page. It is served for any well-formed call without asking Stream: the
/// page itself learns from the state stream whether the call exists and broadcasts.
async fn page(
    State(relay): State<Relay>,
    Path((kind, id)): Path<(String, String)>,
    Query(options): Query<PageOptions>,
) -> Result<Response, RelayError> {
    let call = CallId::new(&kind, &id).map_err(|e| RelayError::BadRequest(e.to_string()))?;
    // Counts come from the relay's `viewers` events; without counting there are none to show.
    let show_viewers = options.viewers.as_deref() == Some("1") && relay.viewers().is_some();
    let config = relay.config().embed.clone();
    let public_origin = relay
        .config()
        .server
        .public_url
        .as_deref()
        .and_then(foreign_origin);
    let csp = content_security_policy(config.script_origin(), public_origin);
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        // The page is the same for every viewer, but what it points at may change with the config.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::try_from(csp).map_err(|_| {
                RelayError::BadRequest("the embed settings make an invalid header".into())
            })?,
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    Ok((headers, render_page(&call, &config, show_viewers)).into_response())
}

/// What a site can ask of the page in its URL.
#[derive(Debug, Default, Deserialize)]
struct PageOptions {
    /// `1`: show how many watch ("N watching").
    viewers: Option<String>,
}

fn render_page(call: &CallId, config: &EmbedConfig, show_viewers: bool) -> String {
    // Relative to the page, like the hls.js route, so a path prefix in front of the relay keeps working.
    let calls = format!("../../v1/calls/{}/{}", call.kind(), call.id());
    let page_config = serde_json::json!({
        "cid": call.to_string(),
        "events": format!("{calls}/events"),
        "state": calls,
        "viewers": show_viewers,
    });
    let title = format!("Live: {call}");
    // One pass over the template, so that interpolated text is never scanned for placeholders again.
    let mut out = String::with_capacity(PAGE.len() + STYLE.len() + SCRIPT.len() + 256);
    let mut rest = PAGE;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .expect("placeholders in page.html are closed");
        match &after[..end] {
            "title" => out.push_str(&escape_html(&title)),
            "style" => out.push_str(STYLE),
            "script" => out.push_str(SCRIPT),
            "config" => out.push_str(&json_for_script(&page_config)),
            "hls_js" => out.push_str(&escape_html(config.script_src())),
            other => unreachable!("unknown placeholder {other} in page.html"),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `default-src 'none'` and only what the player needs: its own style and script (by hash), hls.js (from the relay,
/// or a configured CDN's origin), requests to the relay (state stream, playlists, media; also at
/// `server.public_url` when that is another origin), MSE's `blob:` media and hls.js's `blob:` worker.
/// `frame-ancestors *`: any site may frame it, that is its purpose.
fn content_security_policy(script_origin: Option<String>, public_origin: Option<String>) -> String {
    let script_origin = script_origin.map(|o| format!(" {o}")).unwrap_or_default();
    let public_origin = public_origin.map(|o| format!(" {o}")).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'{script_origin} {script}; style-src {style}; \
         connect-src 'self'{public_origin}; media-src 'self' blob:{public_origin}; worker-src blob:; \
         base-uri 'none'; form-action 'none'; frame-ancestors *",
        script = &*SCRIPT_HASH,
        style = &*STYLE_HASH,
    )
}

/// The origin (`https://host:port`) of an absolute http(s) URL; None for a path on the relay's own origin.
fn foreign_origin(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

fn csp_hash(inline: &str) -> String {
    format!(
        "'sha256-{}'",
        STANDARD.encode(Sha256::digest(inline.as_bytes()))
    )
}

/// Escapes text for HTML content and quoted attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON that is safe inside `<script type="application/json">`: no `</script>`, `<!--` or stray line
/// separators can end or confuse the element.
fn json_for_script(value: &serde_json::Value) -> String {
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallId {
        CallId::new("livestream", "abc_1-2").unwrap()
    }

    const CDN: &str = "https://cdn.jsdelivr.net/npm/hls.js@1.7.4/dist/hls.min.js";

    fn from_cdn() -> EmbedConfig {
        EmbedConfig {
            hls_js_url: Some(CDN.into()),
            hls_js_path: None,
        }
    }

    fn local_file() -> EmbedConfig {
        EmbedConfig {
            hls_js_path: Some("/opt/hls.min.js".into()),
            ..from_cdn()
        }
    }

    #[test]
    fn the_page_points_at_the_call_and_the_built_in_hls_js() {
        let page = render_page(&call(), &EmbedConfig::default(), false);
        assert!(page.contains("<title>Live: livestream:abc_1-2</title>"));
        assert!(page.contains(r#""events":"../../v1/calls/livestream/abc_1-2/events""#));
        assert!(page.contains(r#""state":"../../v1/calls/livestream/abc_1-2""#));
        assert!(page.contains(&format!(
            r#"<script src="../hls-{}.min.js"></script>"#,
            hls_js::VERSION
        )));
        assert!(!page.contains("{{"), "every placeholder is filled");
        assert!(!page.contains("https:"), "nothing from a third party");
        assert!(page.contains(r#""viewers":false"#));
        let page = render_page(&call(), &EmbedConfig::default(), true);
        assert!(page.contains(r#""viewers":true"#));
    }

    #[test]
    fn a_cdn_or_a_local_file_replaces_the_built_in_hls_js() {
        let page = render_page(&call(), &from_cdn(), false);
        assert!(page.contains(&format!(r#"<script src="{CDN}"></script>"#)));
        // A local file wins over a CDN URL.
        let page = render_page(&call(), &local_file(), false);
        assert!(page.contains(r#"<script src="../hls.min.js"></script>"#));
    }

    #[test]
    fn interpolated_text_cannot_break_out() {
        assert_eq!(
            escape_html(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        let json = json_for_script(&serde_json::json!({"x": "</script><!-- \u{2028}"}));
        assert!(!json.contains('<') && !json.contains('\u{2028}'), "{json}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap()["x"],
            "</script><!-- \u{2028}"
        );
        let config = EmbedConfig {
            hls_js_url: Some(r#"https://cdn.example/x.js"><script>alert(1)</script>"#.into()),
            hls_js_path: None,
        };
        let page = render_page(&call(), &config, false);
        assert!(!page.contains("<script>alert(1)"));
    }

    #[test]
    fn the_policy_allows_exactly_what_the_player_loads() {
        let page = render_page(&call(), &EmbedConfig::default(), false);
        // The hashes are over the exact inline text the page carries.
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(page.contains(&format!("<style>{STYLE}</style>")));

        // By default: the relay and nothing else.
        let csp = content_security_policy(EmbedConfig::default().script_origin(), None);
        assert_eq!(
            csp,
            format!(
                "default-src 'none'; script-src 'self' {script}; style-src {style}; connect-src 'self'; \
                 media-src 'self' blob:; worker-src blob:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors *",
                script = &*SCRIPT_HASH,
                style = &*STYLE_HASH,
            )
        );

        let csp = content_security_policy(
            from_cdn().script_origin(),
            foreign_origin("https://live.example.com/base/"),
        );
        assert!(csp.starts_with("default-src 'none'; "));
        assert!(csp.contains(&format!(
            "script-src 'self' https://cdn.jsdelivr.net {};",
            &*SCRIPT_HASH
        )));
        assert!(csp.contains(&format!("style-src {};", &*STYLE_HASH)));
        assert!(csp.contains("connect-src 'self' https://live.example.com;"));
        assert!(csp.contains("media-src 'self' blob: https://live.example.com;"));
        assert!(csp.contains("frame-ancestors *"));
        assert!(!csp.contains("unsafe-inline"));

        let csp = content_security_policy(local_file().script_origin(), None);
        assert!(csp.contains(&format!("script-src 'self' {};", &*SCRIPT_HASH)));
    }

    #[test]
    fn settings_are_checked_at_start_up() {
        assert!(EmbedConfig::default().validate().is_ok());
        for url in ["/static/hls.min.js", "http://10.0.0.1:8000/hls.js", CDN] {
            let config = EmbedConfig {
                hls_js_url: Some(url.into()),
                hls_js_path: None,
            };
            assert!(config.validate().is_ok(), "{url}");
        }
        for url in [
            "hls.min.js",
            "//cdn.example/hls.js",
            "javascript:alert(1)",
            "",
        ] {
            let config = EmbedConfig {
                hls_js_url: Some(url.into()),
                hls_js_path: None,
            };
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("embed.hls_js_url"), "{url}: {error}");
        }
        let missing = EmbedConfig {
            hls_js_path: Some("/nonexistent/hls.min.js".into()),
            hls_js_url: None,
        };
        let error = missing.validate().unwrap_err().to_string();
        assert!(error.contains("embed.hls_js_path"), "{error}");
    }

    #[test]
    fn a_relative_hls_js_url_is_served_by_the_relay_itself() {
        let config = EmbedConfig {
            hls_js_url: Some("/static/hls.min.js".into()),
            hls_js_path: None,
        };
        assert_eq!(config.script_origin(), None);
    }
}
