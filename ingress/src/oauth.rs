//! Instagram Login connect flow (SPEC §4.2) and the merchant's account list.
//!
//! `connect` (server to server) mints a one-time ticket and a `state` bound to a PKCE verifier.
//! `start` (the merchant's browser) trades the ticket for a cookie holding a hash of the state,
//! so the callback only succeeds in the browser that started the flow (RFC 9700 §2.1). PKCE is
//! sent too, though Instagram documents none. `callback` checks everything it can before any
//! outbound call, and always answers with a redirect.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use diesel_async::AsyncPgConnection;
use igsales_meta::webhook::SUBSCRIBED_FIELDS;
use igsales_schema::accounts::{self, AccountError, Connection};
use igsales_schema::{DbError, MerchantId, merchants};
use redis::AsyncCommands;
use serde_json::json;

use crate::AppState;
use crate::auth::{SecretMatcher, random_token, require_bearer, sha256_b64url};
use crate::error::AppError;
use crate::metrics::OAUTH_RESULTS;

const COOKIE: &str = "igs_oauth";
const SCOPE: &str = "instagram_business_basic,instagram_business_manage_messages,\
                     instagram_business_manage_comments";

fn parse_merchant(raw: &str) -> Result<MerchantId, AppError> {
    raw.parse()
        .map_err(|_| AppError::BadRequest("invalid_merchant_id", "merchant_id must be a UUID"))
}

/// 404 unless the merchant exists (checked under its own context, as everything is).
async fn require_merchant(state: &AppState, merchant: MerchantId) -> Result<(), AppError> {
    let found = state
        .db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(merchants::find(c, merchant).await?.is_some())
        })
        .await
        .map_err(|e| AppError::db(&e))?;
    if found {
        Ok(())
    } else {
        Err(AppError::NotFound("no such merchant"))
    }
}

fn pkce_key(merchant: MerchantId, nonce: &str) -> String {
    format!("oauth:pkce:{merchant}:{nonce}")
}

fn ticket_key(ticket: &str) -> String {
    format!("oauth:ticket:{ticket}")
}

/// `POST /v1/merchants/{merchant_id}/instagram/connect`.
pub async fn connect(
    State(state): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    require_bearer(&state.admin, &headers)?;
    let merchant = parse_merchant(&merchant)?;
    require_merchant(&state, merchant).await?;

    let nonce = random_token(32)?;
    let verifier = random_token(32)?;
    let ticket = random_token(32)?;
    let oauth_state = format!("{merchant}.{nonce}");
    let ttl = state.settings.oauth.state_ttl.as_secs();
    let mut redis = state.redis.clone();
    let () = redis::pipe()
        .atomic()
        .set_ex(pkce_key(merchant, &nonce), &verifier, ttl)
        .ignore()
        .set_ex(ticket_key(&ticket), &oauth_state, ttl)
        .ignore()
        .query_async(&mut redis)
        .await
        .map_err(AppError::redis)?;
    let start_url = format!(
        "{}/oauth/instagram/start?ticket={ticket}",
        state.settings.oauth.api_base_url.base()
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({ "start_url": start_url, "expires_in": ttl })),
    )
        .into_response())
}

fn redirect(location: &str, cookie: Option<String>) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

fn with_query(base: &url::Url, pairs: &[(&str, &str)]) -> String {
    let mut url = base.clone();
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    url.to_string()
}

fn cookie(state: &AppState, value: &str, max_age: Duration) -> String {
    let secure = if state.settings.oauth.api_base_url.is_https() {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{COOKIE}={value}; Path=/oauth/instagram; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        max_age.as_secs()
    )
}

/// Every way a callback can fail, as the `error=` of the failure redirect.
#[derive(Debug, Clone, Copy)]
enum Failure {
    InvalidState,
    AccessDenied,
    AlreadyConnected,
    ExchangeFailed,
}

impl Failure {
    fn code(self) -> &'static str {
        match self {
            Failure::InvalidState => "invalid_state",
            Failure::AccessDenied => "access_denied",
            Failure::AlreadyConnected => "already_connected",
            Failure::ExchangeFailed => "exchange_failed",
        }
    }
}

fn fail(state: &AppState, failure: Failure) -> Response {
    metrics::counter!(OAUTH_RESULTS, "result" => failure.code()).increment(1);
    redirect(
        &with_query(
            state.settings.oauth.failure_redirect_url.as_url(),
            &[("error", failure.code())],
        ),
        Some(cookie(state, "", Duration::ZERO)),
    )
}

/// `GET /oauth/instagram/start?ticket=…`: ticket → cookie + redirect to Instagram.
pub async fn start(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let Some(ticket) = q.get("ticket").filter(|t| t.len() <= 128) else {
        return Ok(fail(&state, Failure::InvalidState));
    };
    let mut redis = state.redis.clone();
    let oauth_state: Option<String> = redis
        .get_del(ticket_key(ticket))
        .await
        .map_err(AppError::redis)?;
    let Some((merchant, nonce)) = oauth_state.as_deref().and_then(split_state) else {
        return Ok(fail(&state, Failure::InvalidState));
    };
    let verifier: Option<String> = redis
        .get(pkce_key(merchant, nonce))
        .await
        .map_err(AppError::redis)?;
    let (Some(verifier), Some(oauth_state)) = (verifier, oauth_state.as_deref()) else {
        return Ok(fail(&state, Failure::InvalidState));
    };
    let location = with_query(
        state.settings.oauth.authorize_url.as_url(),
        &[
            ("client_id", state.settings.app.id.as_str()),
            ("redirect_uri", &state.settings.redirect_uri()),
            ("response_type", "code"),
            ("scope", SCOPE),
            ("state", oauth_state),
            ("code_challenge", &sha256_b64url(&verifier)),
            ("code_challenge_method", "S256"),
        ],
    );
    Ok(redirect(
        &location,
        Some(cookie(
            &state,
            &sha256_b64url(oauth_state),
            state.settings.oauth.state_ttl,
        )),
    ))
}

/// `{merchant_id}.{nonce}` → its parts.
fn split_state(s: &str) -> Option<(MerchantId, &str)> {
    let (merchant, nonce) = s.split_once('.')?;
    let merchant = merchant.parse().ok()?;
    (!nonce.is_empty()
        && nonce.len() <= 64
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some((merchant, nonce))
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// `GET /oauth/instagram/callback?code=…&state=…`: always a redirect.
pub async fn callback(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match finish(&state, &q, &headers).await {
        Ok((merchant, username)) => {
            metrics::counter!(OAUTH_RESULTS, "result" => "connected").increment(1);
            redirect(
                &with_query(
                    state.settings.oauth.success_redirect_url.as_url(),
                    &[
                        ("merchant_id", &merchant.to_string()),
                        ("instagram_username", &username),
                    ],
                ),
                Some(cookie(&state, "", Duration::ZERO)),
            )
        }
        Err(failure) => fail(&state, failure),
    }
}

async fn finish(
    state: &AppState,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(MerchantId, String), Failure> {
    // Checks that need no outbound call come first.
    if q.contains_key("error") {
        return Err(Failure::AccessDenied);
    }
    let oauth_state = q.get("state").ok_or(Failure::InvalidState)?;
    let (merchant, nonce) = split_state(oauth_state).ok_or(Failure::InvalidState)?;
    let presented = cookie_value(headers).ok_or(Failure::InvalidState)?;
    if !SecretMatcher::new(&sha256_b64url(oauth_state)).matches(presented.as_bytes()) {
        return Err(Failure::InvalidState);
    }
    let mut redis = state.redis.clone();
    let verifier: Option<String> = redis
        .get_del(pkce_key(merchant, nonce))
        .await
        .map_err(|e| {
            AppError::redis(e);
            Failure::ExchangeFailed
        })?;
    let verifier = verifier.ok_or(Failure::InvalidState)?;
    let code = q
        .get("code")
        .map(|c| c.strip_suffix("#_").unwrap_or(c))
        .filter(|c| !c.is_empty())
        .ok_or(Failure::InvalidState)?;

    // Now Meta: exchange, long-lived token, who it is, then subscribe.
    let meta_failed = |what: &'static str| {
        move |e: igsales_meta::MetaError| {
            metrics::counter!(crate::metrics::DEPENDENCY_ERRORS, "dependency" => "meta")
                .increment(1);
            tracing::warn!(merchant.id = %merchant, step = what, error = %e, "instagram connect failed");
            Failure::ExchangeFailed
        }
    };
    let short = state
        .oauth
        .exchange_code(code, &state.settings.redirect_uri(), &verifier)
        .await
        .map_err(meta_failed("code exchange"))?;
    let long = state
        .oauth
        .long_lived_token(&short.access_token)
        .await
        .map_err(meta_failed("long-lived exchange"))?;
    let me = state
        .meta
        .me(&long.access_token)
        .await
        .map_err(meta_failed("me"))?;
    if !me.user_id.as_str().bytes().all(|b| b.is_ascii_digit()) || me.user_id.as_str().is_empty() {
        return Err(Failure::ExchangeFailed);
    }
    // Never re-point an account another merchant holds (and do not touch its subscription).
    match state
        .db
        .merchant_for_instagram_account(me.user_id.as_str())
        .await
    {
        Ok(Some(owner)) if owner != merchant => return Err(Failure::AlreadyConnected),
        Ok(_) => {}
        Err(e) => {
            AppError::db(&e);
            return Err(Failure::ExchangeFailed);
        }
    }
    let expires_at = Utc::now()
        + chrono::Duration::from_std(long.expires_in)
            .unwrap_or_else(|_| chrono::Duration::days(60));
    let app_user_id = me
        .id
        .as_ref()
        .or(short.user_id.as_ref())
        .map(|i| i.as_str().to_owned());
    // Stored first, subscribed second: Meta delivers as soon as the subscription exists, and
    // an event for an account not yet stored would be dropped as unrouted. A failed store
    // therefore leaves no live subscription behind.
    let (page_id, username, token) = (me.user_id.0.clone(), me.username.clone(), long.access_token);
    let (vault, stored_token) = (&state.vault, &token);
    let stored = state
        .db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            accounts::connect(
                c,
                vault,
                merchant,
                &Connection {
                    instagram_page_id: &page_id,
                    instagram_user_id: app_user_id
                        .as_deref()
                        .filter(|i| i.bytes().all(|b| b.is_ascii_digit())),
                    username: &username,
                    token: stored_token,
                    expires_at,
                },
            )
            .await
        })
        .await;
    match stored {
        Ok(()) => {}
        Err(AccountError::AlreadyConnected) => return Err(Failure::AlreadyConnected),
        Err(e) => {
            tracing::error!(merchant.id = %merchant, error = %e, "storing the connected account failed");
            return Err(Failure::ExchangeFailed);
        }
    }
    state.accounts.forget(me.user_id.as_str()).await;
    // A failed subscribe leaves the account stored with `subscribed_at` unset (the account list
    // shows it); connecting again or `worker accounts resubscribe` completes it.
    state
        .meta
        .subscribe(&token, SUBSCRIBED_FIELDS)
        .await
        .map_err(meta_failed("subscribe"))?;
    let page = me.user_id.0.clone();
    state
        .db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(accounts::mark_subscribed(c, &page).await?)
        })
        .await
        .map_err(|e| {
            tracing::error!(merchant.id = %merchant, error = %e, "recording the subscription failed");
            Failure::ExchangeFailed
        })?;
    tracing::info!(merchant.id = %merchant, instagram.account_id = %me.user_id, "instagram account connected");
    Ok((merchant, me.username))
}

/// `GET /v1/merchants/{merchant_id}/instagram`: the merchant's accounts, never a token.
pub async fn accounts(
    State(state): State<AppState>,
    Path(merchant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    require_bearer(&state.admin, &headers)?;
    let merchant = parse_merchant(&merchant)?;
    let listed = state
        .db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            if merchants::find(c, merchant).await?.is_none() {
                return Ok::<_, DbError>(None);
            }
            Ok(Some(accounts::list(c).await?))
        })
        .await
        .map_err(|e| AppError::db(&e))?
        .ok_or(AppError::NotFound("no such merchant"))?;
    let accounts: Vec<serde_json::Value> = listed
        .into_iter()
        .map(|a| {
            json!({
                "instagram_account_id": a.instagram_page_id,
                "username": a.username,
                "token_expires_at": a.token_expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                "needs_reauth": a.needs_reauth,
                "webhooks_subscribed_at": a.subscribed_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            })
        })
        .collect();
    Ok(Json(json!({ "accounts": accounts })).into_response())
}
