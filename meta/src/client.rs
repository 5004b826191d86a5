//! The one client for Instagram Login OAuth and the Graph API.
//!
//! ureq is blocking: every call runs on tokio's blocking pool, at most `max_concurrency` at a
//! time (a semaphore), each with a global timeout. Base URLs are configurable so tests point
//! them at a local fake. Responses are never logged: they carry tokens.

use std::sync::Arc;
use std::time::Duration;

use igsales_config::{GraphSettings, Secret};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::ids::IdString;
use crate::send::{MAX_PAYLOAD_BYTES, OutgoingMessage};

/// Where the Graph API is; what every call needs.
#[derive(Debug)]
struct Endpoints {
    graph_base: String,
    version: String,
}

/// The app's OAuth credentials: only the connect flow (the ingress) holds them.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    /// `IG_OAUTH_BASE_URL`, e.g. `https://api.instagram.com` (no trailing `/`).
    pub base: String,
    /// `META_APP_ID` (for Instagram Login: the Instagram app id).
    pub client_id: String,
    /// `IG_APP_SECRET`.
    pub client_secret: Secret,
}

/// Graph's error envelope: `{"error":{"message","type","code","error_subcode",…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GraphError {
    #[serde(default)]
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub error_subcode: Option<i64>,
    #[serde(default)]
    pub is_transient: Option<bool>,
    #[serde(default)]
    pub fbtrace_id: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    #[error("Meta did not answer within the timeout")]
    Timeout,
    /// Failed before the request left (resolve, connect, TLS handshake): Meta got nothing.
    #[error("Meta could not be reached: {0}")]
    Transport(String),
    /// Failed after the request was written (a reset, a cut body, a protocol error): Meta may
    /// have acted on it.
    #[error("Meta's answer was lost after the request went out: {0}")]
    Unanswered(String),
    #[error("Meta answered HTTP {status} with Graph error code {}{}", .error.code, .error.error_subcode.map(|s| format!("/{s}")).unwrap_or_default())]
    Graph {
        status: u16,
        error: GraphError,
        /// `X-Business-Use-Case-Usage` `estimated_time_to_regain_access`, when present.
        regain_after: Option<Duration>,
    },
    #[error("Meta's OAuth endpoint refused the request (HTTP {status})")]
    OAuth { status: u16, message: String },
    #[error("Meta answered HTTP {status} without an error envelope")]
    Http { status: u16 },
    #[error("unexpected answer from Meta: {0}")]
    Decode(String),
    #[error("the outbound HTTP pool is shut down")]
    Closed,
    /// Checked before the call: nothing was sent.
    #[error("the message breaks a Send API limit: {0}")]
    Limit(crate::send::LimitError),
    /// Checked before the call: nothing was sent.
    #[error("the ice breakers break a limit: {0}")]
    IceBreakers(IceBreakerError),
}

/// Questions an account may offer on a new conversation (Meta's limit).
pub const MAX_ICE_BREAKERS: usize = 4;
/// Characters in one ice breaker's question.
pub const MAX_ICE_BREAKER_QUESTION_CHARS: usize = 80;

/// One ice breaker: a question shown to a customer opening a conversation, and the payload a
/// tap on it comes back with (as a `postback` whose title is the question).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct IceBreaker {
    pub question: String,
    pub payload: String,
}

/// The first limit a set of ice breakers breaks (the position is 1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceBreakerError {
    #[error("{0} ice breakers; Meta allows 1 to {MAX_ICE_BREAKERS}")]
    Count(usize),
    #[error(
        "ice breaker {0}: the question is empty or over {MAX_ICE_BREAKER_QUESTION_CHARS} characters"
    )]
    Question(usize),
    #[error("ice breaker {0}: the payload is empty or over {MAX_PAYLOAD_BYTES} bytes")]
    Payload(usize),
}

impl IceBreaker {
    /// This one question's limits; `position` (1-based) names it in the error.
    pub fn check(&self, position: usize) -> Result<(), IceBreakerError> {
        let chars = self.question.chars().count();
        if self.question.trim().is_empty() || chars > MAX_ICE_BREAKER_QUESTION_CHARS {
            return Err(IceBreakerError::Question(position));
        }
        if self.payload.is_empty() || self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(IceBreakerError::Payload(position));
        }
        Ok(())
    }
}

/// A whole set against Meta's limits, so a set Meta would refuse is never sent.
pub fn check_ice_breakers(breakers: &[IceBreaker]) -> Result<(), IceBreakerError> {
    if breakers.is_empty() || breakers.len() > MAX_ICE_BREAKERS {
        return Err(IceBreakerError::Count(breakers.len()));
    }
    breakers
        .iter()
        .enumerate()
        .try_for_each(|(i, b)| b.check(i + 1))
}

/// The result of the code exchange (both documented shapes end up here).
#[derive(Debug, Clone)]
pub struct ShortLivedToken {
    pub access_token: Secret,
    /// The app-scoped user id (may exceed 2^53; kept as digits).
    pub user_id: Option<IdString>,
}

#[derive(Debug, Clone)]
pub struct LongLivedToken {
    pub access_token: Secret,
    pub expires_in: Duration,
}

/// `/me?fields=user_id,username`. `user_id` is the professional account id that webhooks
/// carry as `entry.id`; `id` is the app-scoped id.
#[derive(Debug, Clone, Deserialize)]
pub struct Me {
    pub user_id: IdString,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub id: Option<IdString>,
}

#[derive(Clone)]
pub struct MetaClient {
    cfg: Arc<Endpoints>,
    agent: ureq::Agent,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaClient")
            .field("graph_base", &self.cfg.graph_base)
            .finish_non_exhaustive()
    }
}

/// What came back, read whole (bodies are small; ureq caps them at 10 MB).
struct Answer {
    status: u16,
    buc: Option<String>,
    body: String,
}

/// Whether a failed call may have reached Meta. Only what fails before the request is written
/// is safe to repeat: the name did not resolve, nothing listened, the network was unreachable,
/// the TLS handshake failed. Everything else (a reset, a cut or garbled answer, a timeout after
/// connecting) leaves the outcome unknown.
fn transport(e: ureq::Error) -> MetaError {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Timeout(ureq::Timeout::Resolve | ureq::Timeout::Connect) => {
            MetaError::Transport("connect timeout".to_owned())
        }
        ureq::Error::Timeout(_) => MetaError::Timeout,
        // The error text names the kind at most, never the query (which holds tokens).
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused
            | K::AddrNotAvailable
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown => MetaError::Transport(io.kind().to_string()),
            kind => MetaError::Unanswered(kind.to_string()),
        },
        ureq::Error::ConnectionFailed => MetaError::Transport("connection failed".to_owned()),
        ureq::Error::HostNotFound => MetaError::Transport("host not found".to_owned()),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => {
            MetaError::Transport("TLS failure".to_owned())
        }
        _ => MetaError::Unanswered("protocol error".to_owned()),
    }
}

fn answer(
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Answer, MetaError> {
    let mut resp = resp.map_err(transport)?;
    let status = resp.status().as_u16();
    let buc = resp
        .headers()
        .get("x-business-use-case-usage")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The status came: whatever fails now, the request arrived.
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| match transport(e) {
            MetaError::Transport(why) => MetaError::Unanswered(why),
            other => other,
        })?;
    Ok(Answer { status, buc, body })
}

/// The longest `estimated_time_to_regain_access` (minutes) in a BUC header.
pub fn regain_after(header: &str) -> Option<Duration> {
    let v: serde_json::Value = serde_json::from_str(header).ok()?;
    v.as_object()?
        .values()
        .filter_map(|usages| usages.as_array())
        .flatten()
        .filter_map(|u| u.get("estimated_time_to_regain_access")?.as_u64())
        .max()
        .filter(|m| *m > 0)
        .map(|m| Duration::from_secs(m * 60))
}

/// Success → `T`; otherwise the Graph envelope, the OAuth endpoint's envelope, or bare HTTP.
fn decode<T: DeserializeOwned>(a: Answer) -> Result<T, MetaError> {
    if (200..300).contains(&a.status) {
        return serde_json::from_str(&a.body).map_err(|e| MetaError::Decode(e.to_string()));
    }
    #[derive(Deserialize)]
    struct Envelope {
        error: Option<serde_json::Value>,
        error_message: Option<String>,
    }
    let regain = a.buc.as_deref().and_then(regain_after);
    match serde_json::from_str::<Envelope>(&a.body) {
        Ok(Envelope {
            error: Some(err), ..
        }) if err.is_object() => match serde_json::from_value::<GraphError>(err) {
            Ok(error) => Err(MetaError::Graph {
                status: a.status,
                error,
                regain_after: regain,
            }),
            Err(_) => Err(MetaError::Http { status: a.status }),
        },
        Ok(Envelope {
            error_message: Some(message),
            ..
        }) => Err(MetaError::OAuth {
            status: a.status,
            message,
        }),
        _ => Err(MetaError::Http { status: a.status }),
    }
}

#[derive(Deserialize)]
struct TokenFields {
    access_token: String,
    #[serde(default)]
    user_id: Option<IdString>,
}

/// Flat (`{"access_token",…}`, what Meta sends in practice) or documented (`{"data":[…]}`).
#[derive(Deserialize)]
#[serde(untagged)]
enum CodeExchange {
    Flat(TokenFields),
    Wrapped { data: Vec<TokenFields> },
}

#[derive(Deserialize)]
struct LongLivedFields {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Success {
    #[serde(default)]
    success: bool,
}

/// The Messenger Profile API's answer: `{"result":"success"}`.
#[derive(Debug, Deserialize)]
struct ProfileResult {
    #[serde(default)]
    result: String,
}

impl MetaClient {
    /// The Graph client of `GRAPH_*`/`META_HTTP_*`; `dns_cache` is `HTTP_DNS_CACHE_SECS`.
    pub fn new(graph: &GraphSettings, dns_cache: Duration) -> Self {
        let agent = crate::http::agent(&crate::http::AgentSettings {
            timeout: graph.timeout,
            connect_timeout: Duration::from_secs(3),
            max_connections: graph.max_concurrency,
            dns_cache_ttl: dns_cache,
            user_agent: Some("igsales/1"),
        });
        let permits = Arc::new(Semaphore::new(graph.max_concurrency.max(1)));
        MetaClient {
            cfg: Arc::new(Endpoints {
                graph_base: graph.base_url.base().to_owned(),
                version: graph.version.as_str().to_owned(),
            }),
            agent,
            permits,
        }
    }

    /// This client with the app's OAuth credentials, for the connect flow.
    pub fn with_oauth(self, app: OAuthApp) -> OAuthClient {
        OAuthClient {
            graph: self,
            app: Arc::new(app),
        }
    }

    pub fn version(&self) -> &str {
        &self.cfg.version
    }

    /// Runs a blocking call on the blocking pool, bounded by the semaphore.
    async fn call<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        T: Send + 'static,
        F: FnOnce(&ureq::Agent, &Endpoints) -> Result<T, MetaError> + Send + 'static,
    {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| MetaError::Closed)?;
        let agent = self.agent.clone();
        let cfg = self.cfg.clone();
        tokio::task::spawn_blocking(move || f(&agent, &cfg))
            .await
            .map_err(|_| MetaError::Closed)?
    }

    /// Renews a long-lived token (at least 24 h old, not expired) for another 60 days.
    pub async fn refresh_token(&self, token: &Secret) -> Result<LongLivedToken, MetaError> {
        let token = token.clone();
        self.call(move |agent, cfg| {
            let url = format!("{}/refresh_access_token", cfg.graph_base);
            let a = answer(
                agent
                    .get(&url)
                    .query("grant_type", "ig_refresh_token")
                    .query("access_token", token.expose())
                    .call(),
            )?;
            long_lived(decode(a)?)
        })
        .await
    }

    pub async fn me(&self, token: &Secret) -> Result<Me, MetaError> {
        let token = token.clone();
        self.call(move |agent, cfg| {
            let url = format!("{}/{}/me", cfg.graph_base, cfg.version);
            let a = answer(
                agent
                    .get(&url)
                    .query("fields", "user_id,username")
                    .header("Authorization", &format!("Bearer {}", token.expose()))
                    .call(),
            )?;
            decode(a)
        })
        .await
    }

    /// Subscribes the account's webhooks to `fields`.
    pub async fn subscribe(&self, token: &Secret, fields: &str) -> Result<(), MetaError> {
        let (token, fields) = (token.clone(), fields.to_owned());
        self.call(move |agent, cfg| {
            let url = format!("{}/{}/me/subscribed_apps", cfg.graph_base, cfg.version);
            let a = answer(
                agent
                    .post(&url)
                    .query("subscribed_fields", &fields)
                    .header("Authorization", &format!("Bearer {}", token.expose()))
                    .send_empty(),
            )?;
            success(decode(a)?)
        })
        .await
    }

    /// Sends one text message through the Send API; Meta's `message_id` on success.
    pub async fn send_text(
        &self,
        token: &Secret,
        recipient: &str,
        text: &str,
    ) -> Result<String, MetaError> {
        self.send_message(token, recipient, &OutgoingMessage::text(text))
            .await
    }

    /// Sends one message (text, cards, quick replies) through the Send API; Meta's
    /// `message_id` on success. A message over one of Meta's limits is refused here, unsent.
    pub async fn send_message(
        &self,
        token: &Secret,
        recipient: &str,
        message: &OutgoingMessage,
    ) -> Result<String, MetaError> {
        self.send_to(token, Recipient::User(recipient), message)
            .await
    }

    /// [`Self::send_message`] to a user or, as the private reply to a comment, to its author.
    pub async fn send_to(
        &self,
        token: &Secret,
        recipient: Recipient<'_>,
        message: &OutgoingMessage,
    ) -> Result<String, MetaError> {
        #[derive(Deserialize)]
        struct Sent {
            message_id: String,
        }
        message.check().map_err(MetaError::Limit)?;
        let token = token.clone();
        let to = match recipient {
            Recipient::User(id) => serde_json::json!({ "id": id }),
            Recipient::Comment(id) => serde_json::json!({ "comment_id": id }),
        };
        let body = serde_json::json!({
            "recipient": to,
            "message": message,
        });
        self.call(move |agent, cfg| {
            let url = format!("{}/{}/me/messages", cfg.graph_base, cfg.version);
            let a = answer(
                agent
                    .post(&url)
                    .header("Authorization", &format!("Bearer {}", token.expose()))
                    .header("Content-Type", "application/json")
                    .send(body.to_string().as_bytes()),
            )?;
            let sent: Sent = decode(a)?;
            Ok(sent.message_id)
        })
        .await
    }

    /// Replies under a comment, in public (`POST /{comment-id}/replies`); the reply's id.
    pub async fn reply_publicly(
        &self,
        token: &Secret,
        comment: &str,
        text: &str,
    ) -> Result<String, MetaError> {
        #[derive(Deserialize)]
        struct Created {
            id: String,
        }
        if text.trim().is_empty() || text.len() > crate::send::MAX_TEXT_BYTES {
            return Err(MetaError::Limit(crate::send::LimitError::Text));
        }
        let (token, comment, text) = (token.clone(), comment.to_owned(), text.to_owned());
        self.call(move |agent, cfg| {
            let url = format!("{}/{}/{comment}/replies", cfg.graph_base, cfg.version);
            let a = answer(
                agent
                    .post(&url)
                    .header("Authorization", &format!("Bearer {}", token.expose()))
                    .send_form([("message", text.as_str())]),
            )?;
            let created: Created = decode(a)?;
            Ok(created.id)
        })
        .await
    }

    /// Replaces the account's ice breakers (`POST /{ig-user-id}/messenger_profile`, one
    /// `default` locale). A set over Meta's limits is refused here, unsent.
    pub async fn set_ice_breakers(
        &self,
        token: &Secret,
        account: &str,
        breakers: &[IceBreaker],
    ) -> Result<(), MetaError> {
        check_ice_breakers(breakers).map_err(MetaError::IceBreakers)?;
        let body = serde_json::json!({
            "platform": "instagram",
            "ice_breakers": [{
                "call_to_actions": breakers,
                "locale": "default",
            }],
        });
        self.messenger_profile(token, account, ureq::http::Method::POST, body)
            .await
    }

    /// Removes the account's ice breakers (`DELETE /{ig-user-id}/messenger_profile`).
    pub async fn clear_ice_breakers(&self, token: &Secret, account: &str) -> Result<(), MetaError> {
        let body = serde_json::json!({
            "fields": ["ice_breakers"],
            "platform": "instagram",
        });
        self.messenger_profile(token, account, ureq::http::Method::DELETE, body)
            .await
    }

    /// One write to the account's Messenger profile, a JSON body either way (Meta's DELETE
    /// takes one too); `{"result":"success"}` is the only success.
    async fn messenger_profile(
        &self,
        token: &Secret,
        account: &str,
        method: ureq::http::Method,
        body: serde_json::Value,
    ) -> Result<(), MetaError> {
        let (token, account) = (token.clone(), account.to_owned());
        self.call(move |agent, cfg| {
            let url = format!(
                "{}/{}/{account}/messenger_profile",
                cfg.graph_base, cfg.version
            );
            let request = if method == ureq::http::Method::DELETE {
                agent.delete(&url).force_send_body()
            } else {
                agent.post(&url)
            };
            let a = answer(
                request
                    .header("Authorization", &format!("Bearer {}", token.expose()))
                    .header("Content-Type", "application/json")
                    .send(body.to_string().as_bytes()),
            )?;
            let r: ProfileResult = decode(a)?;
            if r.result == "success" {
                Ok(())
            } else {
                Err(MetaError::Decode("result was not success".into()))
            }
        })
        .await
    }

    /// Removes the app's webhook subscription for the account.
    pub async fn unsubscribe(&self, token: &Secret) -> Result<(), MetaError> {
        let token = token.clone();
        self.call(move |agent, cfg| {
            let url = format!("{}/{}/me/subscribed_apps", cfg.graph_base, cfg.version);
            let a = answer(
                agent
                    .delete(&url)
                    .header("Authorization", &format!("Bearer {}", token.expose()))
                    .call(),
            )?;
            success(decode(a)?)
        })
        .await
    }
}

/// The Graph client plus the app's OAuth credentials: the code and token exchanges.
#[derive(Clone)]
pub struct OAuthClient {
    graph: MetaClient,
    app: Arc<OAuthApp>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("oauth_base", &self.app.base)
            .finish_non_exhaustive()
    }
}

impl OAuthClient {
    /// Authorization code → short-lived token. Sends `code_verifier` too (PKCE, which Instagram
    /// ignores today; the browser-bound `state` is the real CSRF control).
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<ShortLivedToken, MetaError> {
        let (code, redirect_uri, verifier) = (
            code.to_owned(),
            redirect_uri.to_owned(),
            code_verifier.to_owned(),
        );
        let app = self.app.clone();
        self.graph
            .call(move |agent, _| {
                let url = format!("{}/oauth/access_token", app.base);
                let a = answer(agent.post(&url).send_form([
                    ("client_id", app.client_id.as_str()),
                    ("client_secret", app.client_secret.expose()),
                    ("grant_type", "authorization_code"),
                    ("redirect_uri", redirect_uri.as_str()),
                    ("code", code.as_str()),
                    ("code_verifier", verifier.as_str()),
                ]))?;
                let fields = match decode::<CodeExchange>(a)? {
                    CodeExchange::Flat(f) => f,
                    CodeExchange::Wrapped { data } => data.into_iter().next().ok_or_else(|| {
                        MetaError::Decode("empty data[] in token response".into())
                    })?,
                };
                if fields.access_token.is_empty() {
                    return Err(MetaError::Decode("empty access_token".into()));
                }
                Ok(ShortLivedToken {
                    access_token: Secret::new(fields.access_token),
                    user_id: fields.user_id,
                })
            })
            .await
    }

    /// Short-lived → long-lived (60 days).
    pub async fn long_lived_token(&self, short: &Secret) -> Result<LongLivedToken, MetaError> {
        let (short, app) = (short.clone(), self.app.clone());
        self.graph
            .call(move |agent, cfg| {
                let url = format!("{}/access_token", cfg.graph_base);
                let a = answer(
                    agent
                        .get(&url)
                        .query("grant_type", "ig_exchange_token")
                        .query("client_secret", app.client_secret.expose())
                        .query("access_token", short.expose())
                        .call(),
                )?;
                long_lived(decode(a)?)
            })
            .await
    }
}

fn long_lived(f: LongLivedFields) -> Result<LongLivedToken, MetaError> {
    if f.access_token.is_empty() {
        return Err(MetaError::Decode("empty access_token".into()));
    }
    Ok(LongLivedToken {
        access_token: Secret::new(f.access_token),
        // Documented: 60 days. A missing value is treated as the documented lifetime.
        expires_in: Duration::from_secs(f.expires_in.unwrap_or(60 * 24 * 3600)),
    })
}

fn success(s: Success) -> Result<(), MetaError> {
    if s.success {
        Ok(())
    } else {
        Err(MetaError::Decode("success was not true".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_token_shapes_decode_and_big_user_ids_keep_their_digits() {
        let flat = Answer {
            status: 200,
            buc: None,
            body: r#"{"access_token":"IGAAx","user_id":27640875392278831,"permissions":["a"]}"#
                .into(),
        };
        match decode::<CodeExchange>(flat).expect("flat") {
            CodeExchange::Flat(f) => {
                assert_eq!(f.user_id.expect("id").as_str(), "27640875392278831")
            }
            CodeExchange::Wrapped { .. } => panic!("flat parsed as wrapped"),
        }
        let wrapped = Answer {
            status: 200,
            buc: None,
            body: r#"{"data":[{"access_token":"IGAAx","user_id":"1020","permissions":"a,b"}]}"#
                .into(),
        };
        assert!(matches!(
            decode::<CodeExchange>(wrapped),
            Ok(CodeExchange::Wrapped { .. })
        ));
    }

    #[test]
    fn ice_breakers_over_metas_limits_are_named_by_position() {
        let q = |question: &str, payload: &str| IceBreaker {
            question: question.into(),
            payload: payload.into(),
        };
        let four = vec![q("Prazo de entrega?", "SHIPPING"); 4];
        assert_eq!(check_ice_breakers(&four), Ok(()));
        let mut five = four.clone();
        five.push(q("Trocas?", "RETURNS"));
        assert_eq!(check_ice_breakers(&five), Err(IceBreakerError::Count(5)));
        assert_eq!(check_ice_breakers(&[]), Err(IceBreakerError::Count(0)));
        // 80 characters (not bytes) is the most a question may have.
        let eighty = "é".repeat(80);
        assert_eq!(check_ice_breakers(&[q(&eighty, "P")]), Ok(()));
        assert_eq!(
            check_ice_breakers(&[q("ok", "P"), q(&format!("{eighty}?"), "P")]),
            Err(IceBreakerError::Question(2))
        );
        assert_eq!(
            check_ice_breakers(&[q("  ", "P")]),
            Err(IceBreakerError::Question(1))
        );
        assert_eq!(
            check_ice_breakers(&[q("ok", "")]),
            Err(IceBreakerError::Payload(1))
        );
        assert_eq!(
            check_ice_breakers(&[q("ok", &"x".repeat(1001))]),
            Err(IceBreakerError::Payload(1))
        );
    }

    #[test]
    fn error_envelopes_are_told_apart_and_buc_regain_time_is_read() {
        let graph = Answer {
            status: 400,
            buc: Some(r#"{"1784":[{"type":"instagram","call_count":100,"estimated_time_to_regain_access":7}]}"#.into()),
            body: r#"{"error":{"message":"(#80002) too many","type":"OAuthException","code":80002,"is_transient":true,"fbtrace_id":"x"}}"#.into(),
        };
        match decode::<Success>(graph) {
            Err(MetaError::Graph {
                status,
                error,
                regain_after,
            }) => {
                assert_eq!((status, error.code), (400, 80002));
                assert_eq!(regain_after, Some(Duration::from_secs(420)));
            }
            other => panic!("{other:?}"),
        }
        let oauth = Answer {
            status: 400,
            buc: None,
            body: r#"{"error_type":"OAuthException","code":400,"error_message":"Matching code was not found or was already used"}"#.into(),
        };
        assert!(matches!(
            decode::<Success>(oauth),
            Err(MetaError::OAuth { status: 400, .. })
        ));
        let bare = Answer {
            status: 502,
            buc: None,
            body: "<html>bad gateway</html>".into(),
        };
        assert!(matches!(
            decode::<Success>(bare),
            Err(MetaError::Http { status: 502 })
        ));
    }
}

/// What a failed call means for the caller (SPEC §5.3): key on Graph's `error.code` and
/// `error_subcode`, not on the HTTP status, which Meta uses loosely for throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Rate limited (codes 4, 17, 32, 341, 613, 80002, 80006 or HTTP 429): wait, do not count
    /// an attempt. `regain_after` from `X-Business-Use-Case-Usage` when Meta said; `scope` says
    /// whose calls the limit counts.
    Throttled {
        regain_after: Option<Duration>,
        scope: ThrottleScope,
    },
    /// Worth retrying with backoff: 5xx, transport failures, Meta's transient errors.
    Transient,
    /// The request may have reached Meta (a timeout, a reset, a cut or garbled answer after it
    /// was written): the outcome is unknown, so a send is not repeated blindly.
    Unknown,
    /// The token is invalid or expired (190): the account needs re-authorisation.
    Reauth,
    /// Outside the 24-hour messaging window (10 / 2534022), or a comment's 7 days.
    WindowExpired,
    /// The comment's one private reply was used already (2534025).
    AlreadyReplied,
    /// Any other client error: retrying will not help.
    Permanent,
}

/// Who a Send API message goes to.
#[derive(Debug, Clone, Copy)]
pub enum Recipient<'a> {
    /// An Instagram-scoped user id.
    User(&'a str),
    /// The author of this comment, as the comment's one private reply.
    Comment(&'a str),
}

/// Whose calls a throttle counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleScope {
    /// The whole app (codes 4 and 341, "Application request limit reached"): every merchant's
    /// calls count against it, so every merchant must hold off.
    App,
    /// One account or business (the BUC limits, 613, 17, 32, a bare 429).
    Account,
}

const THROTTLE_CODES: &[i64] = &[4, 17, 32, 341, 613, 80002, 80006];
const APP_THROTTLE_CODES: &[i64] = &[4, 341];

impl MetaError {
    pub fn class(&self) -> ErrorClass {
        match self {
            // A 2xx whose body does not decode is an answer we cannot read: unknown too.
            MetaError::Timeout | MetaError::Unanswered(_) | MetaError::Decode(_) => {
                ErrorClass::Unknown
            }
            MetaError::Transport(_) | MetaError::Closed => ErrorClass::Transient,
            MetaError::Limit(_) | MetaError::IceBreakers(_) => ErrorClass::Permanent,
            MetaError::Graph {
                status,
                error,
                regain_after,
            } => {
                // 2534013: the private replies' rate or policy limit.
                if THROTTLE_CODES.contains(&error.code)
                    || *status == 429
                    || error.error_subcode == Some(2534013)
                {
                    ErrorClass::Throttled {
                        regain_after: *regain_after,
                        scope: if APP_THROTTLE_CODES.contains(&error.code) {
                            ThrottleScope::App
                        } else {
                            ThrottleScope::Account
                        },
                    }
                } else if error.code == 190 {
                    ErrorClass::Reauth
                } else if error.error_subcode == Some(2534025) {
                    ErrorClass::AlreadyReplied
                } else if error.code == 10 && error.error_subcode == Some(2534022)
                    || error.error_subcode == Some(2534022)
                {
                    ErrorClass::WindowExpired
                } else if *status >= 500
                    || error.is_transient == Some(true)
                    || matches!(error.code, 1 | 2)
                {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            }
            MetaError::Http { status } | MetaError::OAuth { status, .. } => {
                if *status == 429 {
                    ErrorClass::Throttled {
                        regain_after: None,
                        scope: ThrottleScope::Account,
                    }
                } else if *status >= 500 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            }
        }
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    fn graph(status: u16, code: i64, subcode: Option<i64>) -> MetaError {
        MetaError::Graph {
            status,
            error: GraphError {
                message: String::new(),
                kind: None,
                code,
                error_subcode: subcode,
                is_transient: None,
                fbtrace_id: None,
            },
            regain_after: None,
        }
    }

    /// One connection on a local port, answered by `respond` after the request was read.
    fn serve_once(respond: &'static [u8]) -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(respond);
            }
        });
        addr
    }

    fn post(addr: std::net::SocketAddr) -> Result<Answer, MetaError> {
        let agent = crate::http::agent(&crate::http::AgentSettings {
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            max_connections: 1,
            dns_cache_ttl: Duration::from_secs(30),
            user_agent: None,
        });
        answer(
            agent
                .post(format!("http://{addr}/v26.0/me/messages"))
                .send(&b"{}"[..]),
        )
    }

    #[test]
    fn only_failures_before_the_request_left_are_safe_to_repeat() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let refused = post(closed).err().expect("refused");
        assert_eq!(refused.class(), ErrorClass::Transient, "{refused}");

        let hung_up = post(serve_once(b"")).err().expect("no answer");
        assert_eq!(hung_up.class(), ErrorClass::Unknown, "{hung_up}");

        let cut = post(serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 80\r\n\r\n{\"recipient_id\":",
        ))
        .err()
        .expect("cut body");
        assert_eq!(cut.class(), ErrorClass::Unknown, "{cut}");

        #[derive(Debug, Deserialize)]
        struct Sent {
            #[expect(dead_code, reason = "only decoded")]
            message_id: String,
        }
        let garbled = post(serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 9\r\n\r\n<html>ok<",
        ))
        .and_then(decode::<Sent>)
        .expect_err("not json");
        assert_eq!(garbled.class(), ErrorClass::Unknown, "{garbled}");
    }

    #[test]
    fn errors_are_classified_by_code_not_status() {
        let account = ErrorClass::Throttled {
            regain_after: None,
            scope: ThrottleScope::Account,
        };
        let app = ErrorClass::Throttled {
            regain_after: None,
            scope: ThrottleScope::App,
        };
        assert_eq!(graph(400, 80002, None).class(), account);
        assert_eq!(graph(403, 613, None).class(), account);
        assert_eq!(graph(403, 4, None).class(), app);
        assert_eq!(graph(429, 4, None).class(), app);
        assert_eq!(graph(400, 341, None).class(), app);
        assert_eq!(graph(429, 1, None).class(), account);
        assert_eq!(graph(400, 190, Some(463)).class(), ErrorClass::Reauth);
        assert_eq!(
            graph(400, 10, Some(2534022)).class(),
            ErrorClass::WindowExpired
        );
        assert_eq!(graph(400, 10, None).class(), ErrorClass::Permanent);
        assert_eq!(graph(500, 2, None).class(), ErrorClass::Transient);
        assert_eq!(graph(400, 100, None).class(), ErrorClass::Permanent);
        assert_eq!(
            MetaError::Http { status: 503 }.class(),
            ErrorClass::Transient
        );
        assert_eq!(MetaError::Http { status: 429 }.class(), account);
        assert_eq!(MetaError::Timeout.class(), ErrorClass::Unknown);
    }
}
