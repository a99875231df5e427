//! Viewer access: in token mode every viewer request carries a JWT (HS256) that is unexpired and, when it names
//! calls (`call_cids`), names this one. By default the secret is the Stream API secret, so a Stream user token works
//! as is. The token comes as `?token=` (players) or `Authorization: Bearer` (pages' JSON/SSE requests), and the
//! relay carries it into every URI it writes so any player works unchanged.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::error::RelayError;
use crate::stream::call::CallId;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Anyone may watch (the default).
    #[default]
    Public,
    /// Every viewer request needs a valid token.
    Token,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    pub mode: AccessMode,
    /// HS256 secret of viewer tokens; unset: the Stream API secret.
    pub token_secret: Option<String>,
    /// New viewers of a call beyond this many are turned away (503 `viewer_limit`); unset: no limit. Needs
    /// `viewers.enabled`.
    pub max_viewers_per_call: Option<u32>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    call_cids: Option<Vec<String>>,
}

/// Checks viewer tokens (or lets everyone in, in public mode).
#[derive(Clone)]
pub struct Gate {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Gate {
    pub fn new(config: &AccessConfig, stream_secret: Option<&str>) -> Self {
        let secret = config.token_secret.as_deref().or(stream_secret);
        let key = match config.mode {
            AccessMode::Public => None,
            AccessMode::Token => Some(DecodingKey::from_secret(
                secret.unwrap_or_default().as_bytes(),
            )),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        // Stream user tokens may carry no `exp`; one that does must not have passed it.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.leeway = 5;
        Self { key, validation }
    }

    pub fn is_open(&self) -> bool {
        self.key.is_none()
    }

    /// Lets a request for `call` in, returning the token to carry into written URIs (None in public mode).
    pub fn admit<'t>(
        &self,
        call: &CallId,
        token: Option<&'t str>,
    ) -> Result<Option<&'t str>, RelayError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            RelayError::TokenRequired("this relay needs a viewer token (?token=…)".into())
        })?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => {
                    RelayError::TokenExpired("the viewer token has expired".into())
                }
                _ => {
                    RelayError::TokenInvalid("the viewer token is not valid for this relay".into())
                }
            }
        })?;
        if let Some(cids) = claims.claims.call_cids {
            let cid = call.to_string();
            if !cids.contains(&cid) {
                return Err(RelayError::Forbidden(format!(
                    "the viewer token does not grant {cid}"
                )));
            }
        }
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: serde_json::Value, secret: &str) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    fn gate() -> Gate {
        let config = AccessConfig {
            mode: AccessMode::Token,
            ..AccessConfig::default()
        };
        Gate::new(&config, Some("stream-secret"))
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_stream_user_token_is_a_viewer_token() {
        let call = CallId::new("livestream", "abc").unwrap();
        let user = token(serde_json::json!({"user_id": "anna"}), "stream-secret");
        assert_eq!(
            gate().admit(&call, Some(&user)).unwrap(),
            Some(user.as_str())
        );
        let scoped = token(
            serde_json::json!({"user_id": "anna", "exp": now() + 60, "call_cids": ["livestream:abc"]}),
            "stream-secret",
        );
        assert!(gate().admit(&call, Some(&scoped)).is_ok());
    }

    #[test]
    fn missing_expired_forged_and_foreign_tokens_are_refused_with_their_own_codes() {
        let call = CallId::new("livestream", "abc").unwrap();
        let code = |token: Option<&str>| gate().admit(&call, token).unwrap_err().code();
        assert_eq!(code(None), "token_required");
        let expired = token(
            serde_json::json!({"user_id": "a", "exp": now() - 600}),
            "stream-secret",
        );
        assert_eq!(code(Some(&expired)), "token_expired");
        let forged = token(serde_json::json!({"user_id": "a"}), "wrong-secret");
        assert_eq!(code(Some(&forged)), "token_invalid");
        assert_eq!(code(Some("garbage")), "token_invalid");
        let other = token(
            serde_json::json!({"user_id": "a", "call_cids": ["livestream:x"]}),
            "stream-secret",
        );
        assert_eq!(code(Some(&other)), "forbidden");
    }

    #[test]
    fn public_mode_lets_everyone_in() {
        let gate = Gate::new(&AccessConfig::default(), Some("s"));
        assert!(gate.is_open());
        let call = CallId::new("livestream", "abc").unwrap();
        assert_eq!(gate.admit(&call, None).unwrap(), None);
    }
}
