//! Meta's callbacks (SPEC §4.3): deauthorize and data deletion, both authenticated by a
//! `signed_request` that is verified (constant time) before its payload is read.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::SecondsFormat;
use diesel_async::AsyncPgConnection;
use igsales_meta::signed_request::{self, SignedRequest};
use igsales_schema::{DbError, accounts, conversations};
use serde_json::json;

use crate::AppState;
use crate::auth::sha256_hex;
use crate::error::AppError;
use crate::metrics::META_CALLBACKS;

fn verified(state: &AppState, form: &HashMap<String, String>) -> Result<SignedRequest, AppError> {
    let raw = form.get("signed_request").ok_or(AppError::BadRequest(
        "invalid_signed_request",
        "signed_request is required",
    ))?;
    let rejected = |message: &'static str| {
        metrics::counter!(META_CALLBACKS, "callback" => "any", "result" => "rejected").increment(1);
        AppError::BadRequest("invalid_signed_request", message)
    };
    signed_request::verify(state.app_secrets(), raw)
        .map_err(|_| rejected("signed_request did not verify"))?
        // A verified request captured once must not work forever: only a recent one counts.
        .fresh(
            std::time::SystemTime::now(),
            state.settings.callbacks.signed_request_max_age,
        )
        .map_err(|_| rejected("signed_request is not recent (issued_at)"))
}

/// Disconnects every account the user id names: token deleted, marked for re-authorisation.
async fn disconnect_accounts(state: &AppState, user_id: &str) -> Result<usize, AppError> {
    let accounts_of_user = state
        .db
        .accounts_for_meta_user(user_id)
        .await
        .map_err(|e| AppError::db(&e))?;
    for (merchant, page) in &accounts_of_user {
        let page_id = page.clone();
        state
            .db
            .as_merchant(*merchant, async move |c: &AsyncPgConnection| {
                Ok::<_, DbError>(accounts::disconnect(c, &page_id).await?)
            })
            .await
            .map_err(|e| AppError::db(&e))?;
        tracing::info!(merchant.id = %merchant, instagram.account_id = %page, "account deauthorized by Meta");
    }
    Ok(accounts_of_user.len())
}

/// `POST /meta/deauthorize`.
pub async fn deauthorize(
    State(state): State<AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let req = verified(&state, &form)?;
    disconnect_accounts(&state, req.user_id.as_str()).await?;
    metrics::counter!(META_CALLBACKS, "callback" => "deauthorize", "result" => "ok").increment(1);
    Ok(Json(json!({ "success": true })).into_response())
}

/// `POST /meta/data-deletion`: deletes the conversations (and messages) of the account or the
/// customer the user id names, and answers with a status URL and a confirmation code.
pub async fn data_deletion(
    State(state): State<AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let req = verified(&state, &form)?;
    let user_id = req.user_id.as_str().to_owned();
    let code =
        crate::auth::random_token(16).map(|t| sha256_hex(&[t.as_bytes()])[..32].to_owned())?;
    state
        .db
        .create_deletion_request(&code, &sha256_hex(&[user_id.as_bytes()]))
        .await
        .map_err(|e| AppError::db(&e))?;

    // As an account: its conversations go, and it is disconnected.
    let mut conversations_deleted = 0;
    let accounts_of_user = state
        .db
        .accounts_for_meta_user(&user_id)
        .await
        .map_err(|e| AppError::db(&e))?;
    for (merchant, page) in &accounts_of_user {
        let page = page.clone();
        conversations_deleted += state
            .db
            .as_merchant(*merchant, async move |c: &AsyncPgConnection| {
                let n = conversations::delete_for_account(c, &page).await?;
                accounts::disconnect(c, &page).await?;
                Ok::<_, DbError>(n)
            })
            .await
            .map_err(|e| AppError::db(&e))?;
    }
    // As a customer: their conversations with every merchant go.
    for merchant in state
        .db
        .merchants_with_customer(&user_id)
        .await
        .map_err(|e| AppError::db(&e))?
    {
        let customer = user_id.clone();
        conversations_deleted += state
            .db
            .as_merchant(merchant, async move |c: &AsyncPgConnection| {
                Ok::<_, DbError>(conversations::delete_for_customer(c, &customer).await?)
            })
            .await
            .map_err(|e| AppError::db(&e))?;
    }
    // Redis holds the same people's data in waiting and finished jobs and in dead letters:
    // scrubbed by the user id and, for an account, by its professional account id too.
    let mut redis = state.redis.clone();
    let mut scrubbed = igsales_jobs::forget::Scrubbed::default();
    let ids =
        std::iter::once(user_id.as_str()).chain(accounts_of_user.iter().map(|(_, p)| p.as_str()));
    for id in ids.filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())) {
        let s = igsales_jobs::forget::scrub(&mut redis, igsales_jobs::QUEUES, id)
            .await
            .map_err(|e| AppError::redis(igsales_jobs::redis_conn::describe(&e)))?;
        scrubbed.jobs += s.jobs;
        scrubbed.running += s.running;
        scrubbed.dead_letters += s.dead_letters;
    }
    state
        .db
        .complete_deletion_request(&code, accounts_of_user.len(), conversations_deleted)
        .await
        .map_err(|e| AppError::db(&e))?;
    metrics::counter!(META_CALLBACKS, "callback" => "data_deletion", "result" => "ok").increment(1);
    tracing::info!(
        deletion.code = %code,
        deletion.accounts = accounts_of_user.len(),
        deletion.conversations = conversations_deleted,
        deletion.jobs = scrubbed.jobs,
        deletion.jobs_running = scrubbed.running,
        deletion.dead_letters = scrubbed.dead_letters,
        "data deletion completed"
    );
    Ok(Json(json!({
        "url": format!("{}/meta/data-deletion/status?code={code}", state.settings.oauth.api_base_url.base()),
        "confirmation_code": code,
    }))
    .into_response())
}

/// `GET /meta/data-deletion/status?code=…`: what happened to a deletion request.
pub async fn deletion_status(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let code = q
        .get("code")
        .filter(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(AppError::BadRequest(
            "invalid_code",
            "code must be a confirmation code",
        ))?;
    let found = state
        .db
        .deletion_request(code)
        .await
        .map_err(|e| AppError::db(&e))?
        .ok_or(AppError::NotFound("no such deletion request"))?;
    Ok(Json(json!({
        "confirmation_code": found.confirmation_code,
        "status": found.status.as_str(),
        "requested_at": found.requested_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "completed_at": found.completed_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        "accounts_disconnected": found.accounts_disconnected,
        "conversations_deleted": found.conversations_deleted,
    }))
    .into_response())
}
