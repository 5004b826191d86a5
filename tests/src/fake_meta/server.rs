//! The HTTP side: one fallback handler that records every request, applies scripted failures and
//! latency, and answers as Meta's OAuth and Graph endpoints do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use url::Url;

use super::failure::{
    EXPIRED_MESSAGE, GraphError, Reply, json, json_object, json_str, oauth_error,
};
use super::{
    CodeGrant, Endpoint, Failure, FakeAccount, Recorded, SentMessage, Shared, State, TokenGrant,
    TokenKind, TokenShape, find,
};

const CODE_LIFETIME: Duration = Duration::from_secs(3600);
const SHORT_LIVED: Duration = Duration::from_secs(3600);
const LONG_LIVED: Duration = Duration::from_secs(60 * 24 * 3600);
/// The documented sample value (meta-platform.md §3.1).
const LONG_LIVED_EXPIRES_IN: u64 = 5_183_944;
/// Answered in `facebook-api-version` when the path named no version.
const DEFAULT_VERSION: &str = "v25.0";
const MAX_TEXT_BYTES: usize = 1000;
const MAX_ATTACHMENTS: usize = 10;

const BASIC: &str = "instagram_business_basic";
const MANAGE_MESSAGES: &str = "instagram_business_manage_messages";
const MANAGE_COMMENTS: &str = "instagram_business_manage_comments";
const SCOPES: &[&str] = &[
    BASIC,
    "instagram_business_content_publish",
    MANAGE_MESSAGES,
    MANAGE_COMMENTS,
    "instagram_business_manage_insights",
];
/// Webhook fields with the permission each needs besides `instagram_business_basic` (§1.4).
const FIELDS: &[(&str, &str)] = &[
    ("comments", MANAGE_COMMENTS),
    ("live_comments", MANAGE_COMMENTS),
    ("mentions", MANAGE_COMMENTS),
    ("messages", MANAGE_MESSAGES),
    ("message_reactions", MANAGE_MESSAGES),
    ("message_edit", MANAGE_MESSAGES),
    ("messaging_handover", MANAGE_MESSAGES),
    ("messaging_optins", MANAGE_MESSAGES),
    ("messaging_postbacks", MANAGE_MESSAGES),
    ("messaging_referral", MANAGE_MESSAGES),
    ("messaging_seen", MANAGE_MESSAGES),
    ("standby", MANAGE_MESSAGES),
];
/// The decoded header shared by real message ids; the rest is random.
const MID_PREFIX: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOj";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// Where a request goes.
struct Route {
    endpoint: Endpoint,
    /// The Graph node (`me` or an id) for node-scoped endpoints.
    node: Option<String>,
    /// `Some` for Graph paths: the version segment, or the default when unversioned.
    graph_version: Option<String>,
}

fn route(method: &Method, path: &str) -> Route {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let oauth = |endpoint| Route {
        endpoint,
        node: None,
        graph_version: None,
    };
    match (method, segments.as_slice()) {
        (&Method::GET, ["oauth", "authorize"]) => return oauth(Endpoint::Authorize),
        (&Method::POST, ["oauth", "access_token"]) => return oauth(Endpoint::CodeExchange),
        (_, ["oauth", ..]) => return oauth(Endpoint::Unknown),
        _ => {}
    }
    let (version, rest) = match segments.split_first() {
        Some((first, rest)) if is_version(first) => ((*first).to_owned(), rest),
        _ => (DEFAULT_VERSION.to_owned(), segments.as_slice()),
    };
    let (endpoint, node) = match (method, rest) {
        (&Method::GET, ["access_token"]) => (Endpoint::LongLivedExchange, None),
        (&Method::GET, ["refresh_access_token"]) => (Endpoint::Refresh, None),
        (&Method::GET, [node]) if is_node(node) => (Endpoint::Me, Some(*node)),
        (&Method::GET | &Method::POST | &Method::DELETE, [node, "subscribed_apps"])
            if is_node(node) =>
        {
            (Endpoint::SubscribedApps, Some(*node))
        }
        (&Method::POST, [node, "messages"]) if is_node(node) => (Endpoint::Messages, Some(*node)),
        (&Method::POST, [node, "replies"]) if is_node(node) && *node != "me" => {
            (Endpoint::CommentReplies, Some(*node))
        }
        (&Method::GET | &Method::POST | &Method::DELETE, [node, "messenger_profile"])
            if is_node(node) =>
        {
            (Endpoint::MessengerProfile, Some(*node))
        }
        _ => (Endpoint::Unknown, None),
    };
    Route {
        endpoint,
        node: node.map(str::to_owned),
        graph_version: Some(version),
    }
}

/// `v<digits>.<digits>`
fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else {
        return false;
    };
    let Some((major, minor)) = rest.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

fn is_node(segment: &str) -> bool {
    segment == "me" || (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
}

/// The parts of a request the endpoint handlers read.
struct Req {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
    form: Vec<(String, String)>,
}

impl Req {
    fn query(&self, name: &str) -> Option<&str> {
        find(&self.query, name)
    }

    fn form(&self, name: &str) -> Option<&str> {
        find(&self.form, name)
    }

    /// Graph accepts the token as a bearer header, a query parameter or a form field.
    fn access_token(&self) -> Option<&str> {
        let bearer = self
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                let ok =
                    scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth");
                ok.then(|| token.trim())
            });
        bearer
            .or_else(|| self.query("access_token"))
            .or_else(|| self.form("access_token"))
            .filter(|t| !t.is_empty())
    }
}

async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A control route for the sandbox's chat: what the Send API accepted so far.
    if uri.path() == "/_fake/sent" {
        let sent: Vec<Value> = shared
            .state()
            .sent
            .iter()
            .map(|m| serde_json::json!({"recipient_id": m.recipient_id, "text": m.text, "message": m.body.get("message"), "message_id": m.message_id}))
            .collect();
        return axum::Json(sent).into_response();
    }
    let route = route(&method, uri.path());
    let req = Req {
        query: pairs(uri.query().unwrap_or("").as_bytes()),
        form: form_fields(&headers, &body),
        path: uri.path().to_owned(),
        method,
        headers,
        body,
    };
    let (delay, reply, raw, echo, mangle, first_event) = {
        let mut state = shared.state();
        let subscribed_before = state.subscriptions.clone();
        let sent_before = state.sent.len();
        state.requests.push(record(&req, route.endpoint));
        let failure = state.take_failure(route.endpoint);
        let hang = match failure {
            Some(Failure::Hang(d)) => d,
            _ => Duration::ZERO,
        };
        // The throttle header names the account whose calls are counted.
        let account = req
            .access_token()
            .and_then(|t| state.tokens.get(t))
            .map_or_else(
                || state.account.user_id.clone(),
                |g| g.account.user_id.clone(),
            );
        let scripted = failure.as_ref().and_then(|f| f.reply(&account));
        let reply = scripted.unwrap_or_else(|| answer(&shared, &mut state, &req, &route));
        let raw = matches!(failure, Some(Failure::Raw { .. }));
        let mangle = match failure {
            Some(Failure::CutBody) => Some(true),
            Some(Failure::GarbledBody) => Some(false),
            _ => None,
        };
        // Meta echoes every message the account sends back to the app's webhook.
        let echo = match (&state.echo_to, state.sent.get(sent_before)) {
            (Some(target), Some(sent)) => Some((target.clone(), sent.clone())),
            _ => None,
        };
        // A newly subscribed account's first event, when a test asked for one.
        let first_event = match &state.first_event_to {
            Some(target) => state
                .subscriptions
                .keys()
                .find(|k| !subscribed_before.contains_key(*k))
                .map(|account| (target.clone(), account.clone())),
            None => None,
        };
        (state.latency + hang, reply, raw, echo, mangle, first_event)
    };
    // Meta starts delivering the moment a subscription exists, before its answer reaches the
    // caller: one customer message, delivered (once) before the subscribe call is answered.
    if let Some(((url, secret), account)) = first_event {
        let mid = format!("m_first_{account}");
        let body =
            crate::fake_meta::webhook::envelope(&[crate::fake_meta::webhook::messaging_entry(
                &account,
                now_ms(),
                vec![crate::fake_meta::webhook::text_message(
                    "990000000000001",
                    &account,
                    &mid,
                    "oi, acabei de ver vocês",
                    now_ms(),
                )],
            )]);
        let status = tokio::task::spawn_blocking(move || {
            crate::fake_meta::webhook::deliver(&url, &secret, &body).0
        })
        .await
        .unwrap_or(0);
        shared.state().first_events.push((mid, status));
    }
    if let Some(((url, secret), sent)) = echo {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let body =
                crate::fake_meta::webhook::envelope(&[crate::fake_meta::webhook::messaging_entry(
                    &sent.account,
                    now_ms(),
                    vec![
                        match (&sent.text, sent.body.pointer("/message/attachment")) {
                            (None, Some(attachment)) => {
                                crate::fake_meta::webhook::echo_attachments(
                                    &sent.account,
                                    &sent.recipient_id,
                                    &sent.message_id,
                                    Value::Array(vec![attachment.clone()]),
                                    now_ms(),
                                )
                            }
                            _ => crate::fake_meta::webhook::echo(
                                &sent.account,
                                &sent.recipient_id,
                                &sent.message_id,
                                sent.text.as_deref().unwrap_or(""),
                                now_ms(),
                            ),
                        },
                    ],
                )]);
            // Meta retries a delivery that is not answered 200, with backoff, for longer than
            // any outage a test makes (it alerts the developer after 15 minutes of failures).
            let mut pause = Duration::from_millis(200);
            let since = std::time::Instant::now();
            while since.elapsed() < Duration::from_secs(15 * 60) {
                let (u, s, b) = (url.clone(), secret.clone(), body.clone());
                let status = tokio::task::spawn_blocking(move || {
                    crate::fake_meta::webhook::deliver(&u, &s, &b).0
                })
                .await
                .unwrap_or(0);
                if status == 200 {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }
    // The work is done before the wait, as when Meta acts on a request whose answer is late.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut reply = match (&route.graph_version, raw) {
        (Some(version), false) => reply.header("facebook-api-version", version.clone()),
        _ => reply,
    };
    match mangle {
        Some(true) => cut(reply),
        Some(false) => {
            reply.body = "<html><body>OK</body></html>".to_owned();
            reply.into_response()
        }
        None => reply.into_response(),
    }
}

/// `reply`'s status and headers, then half its body and an error: hyper closes the connection
/// short of the declared `Content-Length`.
fn cut(reply: Reply) -> Response {
    let body = reply.body.clone();
    let half = Bytes::from(body.as_bytes()[..body.len() / 2].to_vec());
    let chunks = futures::stream::iter([
        Ok(half),
        Err(std::io::Error::other("connection cut by the fake")),
    ]);
    let mut response = Reply {
        body: String::new(),
        ..reply
    }
    .into_response();
    *response.body_mut() = axum::body::Body::from_stream(chunks);
    if let Ok(len) = header::HeaderValue::from_str(&(body.len() + 64).to_string()) {
        response.headers_mut().insert(header::CONTENT_LENGTH, len);
    }
    response
}

fn record(req: &Req, endpoint: Endpoint) -> Recorded {
    Recorded {
        endpoint,
        method: req.method.to_string(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&req.body).into_owned(),
        form: req.form.clone(),
        at: std::time::Instant::now(),
    }
}

fn answer(shared: &Shared, state: &mut State, req: &Req, route: &Route) -> Reply {
    let node = route.node.as_deref().unwrap_or("me");
    let result = match route.endpoint {
        Endpoint::Authorize => Ok(authorize(shared, state, req)),
        Endpoint::CodeExchange => Ok(exchange_code(shared, state, req)),
        Endpoint::LongLivedExchange => long_lived(shared, state, req),
        Endpoint::Refresh => refresh(state, req),
        Endpoint::Me => me(state, req, node),
        Endpoint::SubscribedApps => subscribed_apps(shared, state, req, node),
        Endpoint::Messages => messages(state, req, node),
        Endpoint::CommentReplies => comment_replies(state, req, node),
        Endpoint::MessengerProfile => messenger_profile(state, req, node),
        Endpoint::Unknown => Err(unknown(req, route)),
    };
    result.unwrap_or_else(|e| e)
}

fn unknown(req: &Req, route: &Route) -> Reply {
    if route.graph_version.is_none() {
        return oauth_error(&format!(
            "Unknown OAuth request: {} {}",
            req.method, req.path
        ));
    }
    GraphError::new(
        400,
        2500,
        format!("Unknown path components: {} {}", req.method, req.path),
    )
    .reply()
}

// ---- OAuth -------------------------------------------------------------------------------------

fn authorize(shared: &Shared, state: &mut State, req: &Req) -> Reply {
    if req.query("client_id") != Some(shared.client_id.as_str()) {
        return oauth_error("Invalid platform app");
    }
    let Some(redirect_uri) = req.query("redirect_uri") else {
        return oauth_error("Invalid redirect_uri");
    };
    let registered =
        shared.redirect_uris.is_empty() || shared.redirect_uris.iter().any(|u| u == redirect_uri);
    let Some(mut target) = Url::parse(redirect_uri).ok().filter(|_| registered) else {
        return oauth_error("Invalid redirect_uri");
    };
    if req.query("response_type") != Some("code") {
        return oauth_error("Invalid response_type: only 'code' is supported");
    }
    let scopes = split_scopes(req.query("scope").unwrap_or(""));
    let unknown: Vec<&str> = scopes
        .iter()
        .map(String::as_str)
        .filter(|s| !SCOPES.contains(s))
        .collect();
    if !unknown.is_empty() {
        return oauth_error(&format!("Invalid scope field(s): {}", unknown.join(",")));
    }
    if !scopes.iter().any(|s| s == BASIC) {
        return oauth_error("Invalid scope: instagram_business_basic is required");
    }
    let csrf = req.query("state");
    if std::mem::take(&mut state.deny_next) {
        let mut q = target.query_pairs_mut();
        q.append_pair("error", "access_denied")
            .append_pair("error_reason", "user_denied")
            .append_pair("error_description", "The user denied your request");
        if let Some(s) = csrf {
            q.append_pair("state", s);
        }
        drop(q);
        return redirect(&target);
    }
    let code = random_alnum(64);
    state.codes.insert(
        code.clone(),
        CodeGrant {
            client_id: shared.client_id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            account: state.account.clone(),
            permissions: scopes,
            expires: Instant::now() + CODE_LIFETIME,
            used: false,
        },
    );
    {
        let mut q = target.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(s) = csrf {
            q.append_pair("state", s);
        }
    }
    // Documented: "The #_ appended to the end of the redirect URI is not part of the code".
    target.set_fragment(Some("_"));
    redirect(&target)
}

/// Comma- or space-separated, duplicates dropped, order kept.
fn split_scopes(scope: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scope
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    out
}

fn redirect(target: &Url) -> Reply {
    Reply {
        status: 302,
        headers: vec![("location".to_owned(), target.to_string())],
        body: String::new(),
    }
}

fn exchange_code(shared: &Shared, state: &mut State, req: &Req) -> Reply {
    for field in [
        "client_id",
        "client_secret",
        "grant_type",
        "redirect_uri",
        "code",
    ] {
        if req.form(field).is_none_or(str::is_empty) {
            return oauth_error(&format!("You must provide a {field}"));
        }
    }
    if req.form("client_id") != Some(shared.client_id.as_str()) {
        return oauth_error("Invalid platform app");
    }
    if req.form("client_secret") != Some(shared.client_secret.as_str()) {
        return oauth_error("Error validating client secret.");
    }
    if req.form("grant_type") != Some("authorization_code") {
        return oauth_error("Invalid grant_type");
    }
    let code = req.form("code").unwrap_or_default();
    let redirect_uri = req.form("redirect_uri").unwrap_or_default();
    let now = Instant::now();
    let grant = state.codes.get_mut(code).filter(|g| {
        !g.used
            && g.expires > now
            && g.client_id == shared.client_id
            && g.redirect_uri == redirect_uri
    });
    let Some(grant) = grant else {
        return oauth_error("Matching code was not found or was already used");
    };
    grant.used = true;
    let account = grant.account.clone();
    let permissions = grant.permissions.clone();
    let token = issue(state, TokenKind::ShortLived, &account, &permissions);
    let body = match state.token_shape {
        TokenShape::Flat => {
            let perms: Vec<String> = permissions.iter().map(|p| json_str(p)).collect();
            json_object(&[
                ("access_token", json_str(&token)),
                ("user_id", bare_integer(&account.app_scoped_id)),
                ("permissions", format!("[{}]", perms.join(","))),
            ])
        }
        TokenShape::DataArray => format!(
            "{{\"data\":[{}]}}",
            json_object(&[
                ("access_token", json_str(&token)),
                ("user_id", json_str(&account.app_scoped_id)),
                ("permissions", json_str(&permissions.join(","))),
            ])
        ),
    };
    json(200, body)
}

/// The id's digits as a bare JSON number, written as text so no float ever rounds it; a
/// non-numeric id (a misconfigured test) stays a string rather than producing invalid JSON.
fn bare_integer(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        id.to_owned()
    } else {
        json_str(id)
    }
}

pub(crate) fn issue(
    state: &mut State,
    kind: TokenKind,
    account: &FakeAccount,
    permissions: &[String],
) -> String {
    let token = format!("IGAA{}", random_alnum(120));
    let lifetime = match kind {
        TokenKind::ShortLived => SHORT_LIVED,
        TokenKind::LongLived => LONG_LIVED,
    };
    state.tokens.insert(
        token.clone(),
        TokenGrant {
            kind,
            account: account.clone(),
            permissions: permissions.to_vec(),
            expires: Instant::now() + lifetime,
        },
    );
    state.issued.push(token.clone());
    token
}

fn long_lived_reply(token: &str) -> Reply {
    json(
        200,
        json_object(&[
            ("access_token", json_str(token)),
            ("token_type", json_str("bearer")),
            ("expires_in", LONG_LIVED_EXPIRES_IN.to_string()),
        ]),
    )
}

fn long_lived(shared: &Shared, state: &mut State, req: &Req) -> Result<Reply, Reply> {
    if req.query("grant_type") != Some("ig_exchange_token") {
        return Err(GraphError::new(
            400,
            100,
            "Unsupported grant_type: expected ig_exchange_token",
        )
        .reply());
    }
    if req.query("client_secret") != Some(shared.client_secret.as_str()) {
        return Err(GraphError::new(400, 190, "Error validating client secret.").reply());
    }
    let grant = token_grant(state, req.query("access_token"), TokenKind::ShortLived)?;
    let token = issue(
        state,
        TokenKind::LongLived,
        &grant.account,
        &grant.permissions,
    );
    Ok(long_lived_reply(&token))
}

fn refresh(state: &mut State, req: &Req) -> Result<Reply, Reply> {
    if req.query("grant_type") != Some("ig_refresh_token") {
        return Err(GraphError::new(
            400,
            100,
            "Unsupported grant_type: expected ig_refresh_token",
        )
        .reply());
    }
    let grant = token_grant(state, req.query("access_token"), TokenKind::LongLived)?;
    // The old token stays valid until it expires; Meta does not say it is revoked.
    let token = issue(
        state,
        TokenKind::LongLived,
        &grant.account,
        &grant.permissions,
    );
    Ok(long_lived_reply(&token))
}

/// A live token of `kind`; anything else is the 190 a client would get.
fn token_grant(state: &State, token: Option<&str>, kind: TokenKind) -> Result<TokenGrant, Reply> {
    let grant = authenticate(state, token)?;
    if grant.kind != kind {
        return Err(invalid_token());
    }
    Ok(grant)
}

// ---- Graph -------------------------------------------------------------------------------------

fn authenticate(state: &State, token: Option<&str>) -> Result<TokenGrant, Reply> {
    let Some(token) = token else {
        return Err(GraphError::new(
            400,
            190,
            "An active access token must be used to query information about the current user.",
        )
        .www_authenticate("invalid_request")
        .reply());
    };
    let Some(grant) = state.tokens.get(token) else {
        return Err(invalid_token());
    };
    if grant.expires <= Instant::now() {
        return Err(GraphError::new(400, 190, EXPIRED_MESSAGE)
            .subcode(463)
            .www_authenticate("invalid_token")
            .reply());
    }
    Ok(grant.clone())
}

fn invalid_token() -> Reply {
    GraphError::new(
        400,
        190,
        "Invalid OAuth access token - Cannot parse access token",
    )
    .www_authenticate("invalid_token")
    .reply()
}

/// The account id a node names: `me` is the token's IG account; an explicit id must be that
/// account's (either of its ids).
fn resolve_node(grant: &TokenGrant, node: &str, method: &Method) -> Result<String, Reply> {
    let account = &grant.account;
    if node == "me" {
        return Ok(account.user_id.clone());
    }
    if node == account.user_id || node == account.app_scoped_id {
        return Ok(node.to_owned());
    }
    Err(GraphError::new(
        400,
        100,
        format!(
            "Unsupported {} request. Object with ID '{node}' does not exist, cannot be loaded due \
             to missing permissions, or does not support this operation. Please read the Graph \
             API documentation at https://developers.facebook.com/docs/graph-api",
            method.as_str().to_ascii_lowercase()
        ),
    )
    .subcode(33)
    .reply())
}

fn require_permission(grant: &TokenGrant, permission: &str) -> Result<(), Reply> {
    if grant.permissions.iter().any(|p| p == permission) {
        return Ok(());
    }
    Err(GraphError::new(
        400,
        10,
        "(#10) Application does not have permission for this action",
    )
    .reply())
}

fn me(state: &State, req: &Req, node: &str) -> Result<Reply, Reply> {
    let grant = authenticate(state, req.access_token())?;
    resolve_node(&grant, node, &req.method)?;
    let account = &grant.account;
    let mut fields = split_scopes(req.query("fields").unwrap_or(""));
    // Graph always answers `id`; without `fields` it answers only `id`.
    if !fields.iter().any(|f| f == "id") {
        fields.push("id".to_owned());
    }
    let mut out = Vec::new();
    for field in &fields {
        let value = match field.as_str() {
            "id" => json_str(&account.app_scoped_id),
            "user_id" => json_str(&account.user_id),
            "username" | "name" => json_str(&account.username),
            "account_type" => json_str("BUSINESS"),
            other => {
                return Err(GraphError::new(
                    400,
                    100,
                    format!(
                        "(#100) Tried accessing nonexisting field ({other}) on node type (User)"
                    ),
                )
                .reply());
            }
        };
        out.push((field.as_str(), value));
    }
    Ok(json(200, json_object(&out)))
}

fn subscribed_apps(
    shared: &Shared,
    state: &mut State,
    req: &Req,
    node: &str,
) -> Result<Reply, Reply> {
    let grant = authenticate(state, req.access_token())?;
    resolve_node(&grant, node, &req.method)?;
    let user_id = grant.account.user_id.clone();
    let success = || json(200, r#"{"success":true}"#.to_owned());
    match req.method {
        Method::DELETE => {
            state.subscriptions.remove(&user_id);
            Ok(success())
        }
        Method::GET => {
            let data = match state.subscriptions.get(&user_id) {
                Some(fields) => {
                    let list: Vec<String> = fields.iter().map(|f| json_str(f)).collect();
                    json_object(&[
                        ("subscribed_fields", format!("[{}]", list.join(","))),
                        ("id", json_str(&shared.client_id)),
                    ])
                }
                None => String::new(),
            };
            Ok(json(200, format!("{{\"data\":[{data}]}}")))
        }
        _ => {
            let raw = req
                .query("subscribed_fields")
                .or_else(|| req.form("subscribed_fields"))
                .unwrap_or("");
            let fields = split_scopes(raw);
            if fields.is_empty() {
                return Err(GraphError::new(
                    400,
                    100,
                    "(#100) The parameter subscribed_fields is required.",
                )
                .reply());
            }
            for field in &fields {
                let Some((_, permission)) = FIELDS.iter().find(|(f, _)| f == field) else {
                    let known: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
                    return Err(GraphError::new(
                        400,
                        100,
                        format!(
                            "(#100) Param subscribed_fields must be one of {{{}}} - got \"{field}\"",
                            known.join(", ")
                        ),
                    )
                    .reply());
                };
                require_permission(&grant, permission)?;
            }
            state.subscriptions.insert(user_id, fields);
            Ok(success())
        }
    }
}

fn messages(state: &mut State, req: &Req, node: &str) -> Result<Reply, Reply> {
    let grant = authenticate(state, req.access_token())?;
    let account = resolve_node(&grant, node, &req.method)?;
    require_permission(&grant, MANAGE_MESSAGES)?;
    let body = send_body(req)?;
    let param = |message: &str| GraphError::new(400, 100, format!("(#100) {message}")).reply();
    // Meta's Send API limit, per account: 100 calls a second.
    let now = Instant::now();
    let calls = state.send_calls.entry(account.clone()).or_default();
    while calls
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        calls.pop_front();
    }
    if calls.len() >= SEND_CALLS_PER_SEC {
        state.limit_breaches += 1;
        return Err(GraphError::new(
            400,
            613,
            "(#613) Calls to this api have exceeded the rate limit.",
        )
        .reply());
    }
    calls.push_back(now);
    let comment_id = body
        .pointer("/recipient/comment_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let recipient_id = match (&comment_id, body.pointer("/recipient/id")) {
        (Some(c), _) => private_reply(state, &grant, &account, c, now)?,
        (None, Some(Value::String(s))) if !s.is_empty() => s.clone(),
        (None, Some(Value::Number(n))) => n.to_string(),
        _ => return Err(param("The parameter recipient is required")),
    };
    if let Some(action) = body.get("sender_action") {
        let action = action.as_str().unwrap_or_default();
        let payload_mid = body.pointer("/payload/message_id").and_then(Value::as_str);
        let ok = match action {
            "typing_on" | "typing_off" | "mark_seen" => true,
            "react" => {
                payload_mid.is_some()
                    && body
                        .pointer("/payload/reaction")
                        .is_some_and(Value::is_string)
            }
            "unreact" => payload_mid.is_some(),
            _ => false,
        };
        if !ok {
            return Err(param("Param sender_action or its payload is invalid"));
        }
        return Ok(json(
            200,
            json_object(&[("recipient_id", json_str(&recipient_id))]),
        ));
    }
    let Some(message) = body.get("message").filter(|m| m.is_object()) else {
        return Err(param("The parameter message is required"));
    };
    let text = message.get("text");
    let attachment = message.get("attachment");
    let attachments = message.get("attachments");
    let kinds = [text, attachment, attachments]
        .iter()
        .filter(|k| k.is_some())
        .count();
    if kinds != 1 {
        return Err(param(
            "Exactly one of message[text], message[attachment] or message[attachments] is required",
        ));
    }
    let text = match text {
        Some(Value::String(t)) if t.is_empty() => {
            return Err(param("Param message[text] must be non-empty."));
        }
        Some(Value::String(t)) if t.len() > MAX_TEXT_BYTES => {
            return Err(param(&format!(
                "Length of param message[text] must be less than or equal to {MAX_TEXT_BYTES}"
            )));
        }
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(param("Param message[text] must be a string")),
        None => None,
    };
    if let Some(a) = attachment
        && !a.get("type").is_some_and(Value::is_string)
    {
        return Err(param("Param message[attachment][type] is required"));
    }
    if let Some(a) = attachment
        && a.get("type").and_then(Value::as_str) == Some("template")
    {
        template(a.get("payload")).map_err(|m| param(&m))?;
    }
    if let Some(q) = message.get("quick_replies") {
        quick_replies(q).map_err(|m| param(&m))?;
    }
    if let Some(a) = attachments {
        // The docs show both an object and an array of up to ten.
        let items: Vec<&Value> = match a {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        if items.is_empty() || items.len() > MAX_ATTACHMENTS {
            return Err(param(
                "Param message[attachments] must hold 1 to 10 attachments",
            ));
        }
        if !items
            .iter()
            .all(|i| i.get("type").is_some_and(Value::is_string))
        {
            return Err(param("Param message[attachments][type] is required"));
        }
    }
    let message_id = format!("{MID_PREFIX}{}", random_alnum(120));
    if let Some(c) = comment_id.as_ref().and_then(|c| state.comments.get_mut(c)) {
        c.private_replied = true;
        state
            .private_reply_calls
            .entry(account.clone())
            .or_default()
            .push_back(now);
    }
    state.sent.push(SentMessage {
        account,
        recipient_id: recipient_id.clone(),
        text,
        body: body.clone(),
        message_id: message_id.clone(),
        at_ms: now_ms(),
        comment_id,
    });
    Ok(json(
        200,
        json_object(&[
            ("recipient_id", json_str(&recipient_id)),
            ("message_id", json_str(&message_id)),
        ]),
    ))
}

/// Send API calls an account may make in a second.
const SEND_CALLS_PER_SEC: usize = 100;
/// Private replies an account may send in an hour (to comments on posts and reels).
const PRIVATE_REPLIES_PER_HOUR: usize = 750;
/// How long after a comment its private reply is accepted.
const PRIVATE_REPLY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Checks a private reply to `comment_id` by `account` against Meta's rules (a comment on
/// the account's media, top-level, within 7 days, one reply each, 750 an hour); the comment
/// author's id, whom the message goes to.
fn private_reply(
    state: &mut State,
    grant: &TokenGrant,
    account: &str,
    comment_id: &str,
    now: Instant,
) -> Result<String, Reply> {
    require_permission(grant, MANAGE_COMMENTS)?;
    let Some(comment) = state
        .comments
        .get(comment_id)
        .filter(|c| c.account == account)
    else {
        return Err(GraphError::new(
            400,
            100,
            format!(
                "(#100) Unsupported post request. Object with ID '{comment_id}' does not exist"
            ),
        )
        .subcode(33)
        .reply());
    };
    let refuse = |subcode: u32, message: &str| {
        GraphError::new(400, 10, format!("(#10) {message}"))
            .subcode(subcode)
            .reply()
    };
    if comment.parent_id.is_some() {
        return Err(GraphError::new(
            400,
            100,
            "(#100) A private reply can only answer a top-level comment",
        )
        .reply());
    }
    if comment.private_replied {
        return Err(refuse(
            2534025,
            "This comment already has its private reply",
        ));
    }
    if now.duration_since(comment.created) > PRIVATE_REPLY_WINDOW {
        return Err(refuse(
            2534022,
            "This message is sent outside of allowed window.",
        ));
    }
    let author = comment.author.clone();
    let calls = state
        .private_reply_calls
        .entry(account.to_owned())
        .or_default();
    while calls
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
    {
        calls.pop_front();
    }
    if calls.len() >= PRIVATE_REPLIES_PER_HOUR {
        state.limit_breaches += 1;
        return Err(refuse(
            2534013,
            "The account has reached its limit of private replies",
        ));
    }
    Ok(author)
}

/// `POST /{comment-id}/replies`: a public reply under a top-level comment on the account's
/// media.
fn comment_replies(state: &mut State, req: &Req, node: &str) -> Result<Reply, Reply> {
    let grant = authenticate(state, req.access_token())?;
    require_permission(&grant, MANAGE_COMMENTS)?;
    let account = grant.account.user_id.clone();
    let Some(comment) = state.comments.get(node).filter(|c| c.account == account) else {
        return Err(GraphError::new(
            400,
            100,
            format!("(#100) Unsupported post request. Object with ID '{node}' does not exist"),
        )
        .subcode(33)
        .reply());
    };
    if comment.parent_id.is_some() {
        return Err(GraphError::new(
            400,
            100,
            "(#100) Replies can only answer a top-level comment",
        )
        .reply());
    }
    let text = req
        .form("message")
        .or_else(|| req.query("message"))
        .unwrap_or_default();
    if text.trim().is_empty() {
        return Err(GraphError::new(400, 100, "(#100) The parameter message is required").reply());
    }
    let id = format!("1789{}{}", now_ms(), state.public_replies.len());
    state.public_replies.push(crate::fake_meta::PublicReply {
        account,
        comment_id: node.to_owned(),
        text: text.to_owned(),
        id: id.clone(),
    });
    Ok(json(200, json_object(&[("id", json_str(&id))])))
}

/// Ice breakers an account may have, and characters in each one's question.
const MAX_ICE_BREAKERS: usize = 4;
const MAX_ICE_BREAKER_QUESTION_CHARS: usize = 80;

/// `/{ig-user-id}/messenger_profile` for ice breakers, per account: POST sets them (a
/// `default` locale entry of 1 to 4 questions), GET lists them, DELETE removes them; every
/// call names `platform=instagram`.
fn messenger_profile(state: &mut State, req: &Req, node: &str) -> Result<Reply, Reply> {
    let grant = authenticate(state, req.access_token())?;
    resolve_node(&grant, node, &req.method)?;
    require_permission(&grant, MANAGE_MESSAGES)?;
    let account = grant.account.user_id.clone();
    let param = |message: &str| GraphError::new(400, 100, format!("(#100) {message}")).reply();
    // GET reads its parameters from the query; POST and DELETE from a JSON (or form) body,
    // or the query as Graph also allows.
    let body = match req.method {
        Method::GET => Value::Null,
        _ => send_body(req).unwrap_or(Value::Null),
    };
    let field = |name: &str| -> Option<Value> {
        body.get(name).cloned().or_else(|| {
            req.query(name)
                .map(|v| serde_json::from_str(v).unwrap_or_else(|_| Value::from(v)))
        })
    };
    if field("platform").as_ref().and_then(Value::as_str) != Some("instagram") {
        return Err(param("Param platform must be instagram"));
    }
    let names_ice_breakers = |v: Option<Value>| match v {
        Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some("ice_breakers")),
        Some(Value::String(s)) => s.split(',').any(|f| f.trim() == "ice_breakers"),
        _ => false,
    };
    let success = || json(200, r#"{"result":"success"}"#.to_owned());
    match req.method {
        Method::GET => {
            if !names_ice_breakers(field("fields")) {
                return Err(param("Param fields must name ice_breakers"));
            }
            let data = match state.ice_breakers.get(&account) {
                Some(items) => {
                    let ctas: Vec<Value> = items
                        .iter()
                        .map(|(q, p)| serde_json::json!({"question": q, "payload": p}))
                        .collect();
                    vec![serde_json::json!({"call_to_actions": ctas, "locale": "default"})]
                }
                None => Vec::new(),
            };
            Ok(json(200, serde_json::json!({ "data": data }).to_string()))
        }
        Method::DELETE => {
            if !names_ice_breakers(field("fields")) {
                return Err(param("Param fields must name ice_breakers"));
            }
            state.ice_breakers.remove(&account);
            Ok(success())
        }
        _ => {
            let Some(Value::Array(entries)) = field("ice_breakers") else {
                return Err(param("Param ice_breakers must be an array"));
            };
            let Some(default) = entries
                .iter()
                .find(|e| e.get("locale").and_then(Value::as_str) == Some("default"))
            else {
                return Err(param(
                    "Param ice_breakers needs an entry with locale default",
                ));
            };
            for e in &entries {
                let ctas = match e.get("call_to_actions") {
                    Some(Value::Array(c)) if !c.is_empty() && c.len() <= MAX_ICE_BREAKERS => c,
                    _ => {
                        return Err(param(&format!(
                            "Param ice_breakers[call_to_actions] must hold 1 to {MAX_ICE_BREAKERS} questions"
                        )));
                    }
                };
                for cta in ctas {
                    let what = "ice_breakers[call_to_actions]";
                    text_field(cta, "question", MAX_ICE_BREAKER_QUESTION_CHARS, true, what)
                        .map_err(|m| param(&m))?;
                    payload_field(cta, what).map_err(|m| param(&m))?;
                }
            }
            // Checked above: every question and payload is a string.
            let items = default["call_to_actions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                    (s("question"), s("payload"))
                })
                .collect();
            state.ice_breakers.insert(account, items);
            Ok(success())
        }
    }
}

/// Characters in a template element's title and subtitle, a button's title, a quick reply's
/// title; elements, buttons and quick replies a message may carry; bytes in a payload.
const MAX_TITLE_CHARS: usize = 80;
const MAX_BUTTON_TITLE_CHARS: usize = 20;
const MAX_QUICK_REPLY_TITLE_CHARS: usize = 20;
const MAX_ELEMENTS: usize = 10;
const MAX_BUTTONS: usize = 3;
const MAX_QUICK_REPLIES: usize = 13;
const MAX_PAYLOAD_BYTES: usize = 1000;

/// A string field within `max` characters (`required`: present and not blank).
fn text_field(v: &Value, key: &str, max: usize, required: bool, what: &str) -> Result<(), String> {
    match v.get(key) {
        None | Some(Value::Null) if !required => Ok(()),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max => Ok(()),
        Some(Value::String(s)) if !required && s.is_empty() => Ok(()),
        _ => Err(format!(
            "Param {what}[{key}] must be a non-empty string of at most {max} characters"
        )),
    }
}

fn url_field(v: &Value, key: &str, required: bool, what: &str) -> Result<(), String> {
    match v.get(key) {
        None | Some(Value::Null) if !required => Ok(()),
        Some(Value::String(u)) if u.starts_with("https://") || u.starts_with("http://") => Ok(()),
        _ => Err(format!("Param {what}[{key}] must be a URL")),
    }
}

fn payload_field(v: &Value, what: &str) -> Result<(), String> {
    match v.get("payload") {
        Some(Value::String(p)) if !p.is_empty() && p.len() <= MAX_PAYLOAD_BYTES => Ok(()),
        _ => Err(format!(
            "Param {what}[payload] must be a non-empty string of at most {MAX_PAYLOAD_BYTES} bytes"
        )),
    }
}

/// A generic template as the Send API accepts it.
fn template(payload: Option<&Value>) -> Result<(), String> {
    let Some(p) = payload.filter(|p| p.is_object()) else {
        return Err("Param message[attachment][payload] is required".into());
    };
    if p.get("template_type").and_then(Value::as_str) != Some("generic") {
        return Err("Param message[attachment][payload][template_type] must be generic".into());
    }
    let elements = match p.get("elements") {
        Some(Value::Array(e)) if !e.is_empty() && e.len() <= MAX_ELEMENTS => e,
        _ => {
            return Err(format!(
                "Param message[attachment][payload][elements] must hold 1 to {MAX_ELEMENTS} elements"
            ));
        }
    };
    for e in elements {
        let what = "message[attachment][payload][elements]";
        text_field(e, "title", MAX_TITLE_CHARS, true, what)?;
        text_field(e, "subtitle", MAX_TITLE_CHARS, false, what)?;
        url_field(e, "image_url", false, what)?;
        if let Some(d) = e.get("default_action") {
            if d.get("type").and_then(Value::as_str) != Some("web_url") {
                return Err(format!(
                    "Param {what}[default_action][type] must be web_url"
                ));
            }
            url_field(d, "url", true, "default_action")?;
        }
        let buttons = match e.get("buttons") {
            None => &Vec::new(),
            Some(Value::Array(b)) if b.len() <= MAX_BUTTONS => b,
            _ => {
                return Err(format!(
                    "Param {what}[buttons] must hold at most {MAX_BUTTONS} buttons"
                ));
            }
        };
        for b in buttons {
            let what = "buttons";
            text_field(b, "title", MAX_BUTTON_TITLE_CHARS, true, what)?;
            match b.get("type").and_then(Value::as_str) {
                Some("web_url") => url_field(b, "url", true, what)?,
                Some("postback") => payload_field(b, what)?,
                _ => return Err("Param buttons[type] must be web_url or postback".into()),
            }
        }
    }
    Ok(())
}

fn quick_replies(q: &Value) -> Result<(), String> {
    let items = match q {
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_QUICK_REPLIES => items,
        _ => {
            return Err(format!(
                "Param message[quick_replies] must hold 1 to {MAX_QUICK_REPLIES} quick replies"
            ));
        }
    };
    for item in items {
        if item.get("content_type").and_then(Value::as_str) != Some("text") {
            return Err("Param message[quick_replies][content_type] must be text".into());
        }
        let what = "message[quick_replies]";
        text_field(item, "title", MAX_QUICK_REPLY_TITLE_CHARS, true, what)?;
        payload_field(item, what)?;
    }
    Ok(())
}

/// The Send API body: JSON, or (as Graph also takes) form fields whose values are JSON.
fn send_body(req: &Req) -> Result<Value, Reply> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(&req.body) {
        return Ok(v);
    }
    if !req.form.is_empty() {
        let mut map = serde_json::Map::new();
        for (k, v) in &req.form {
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::from(v.as_str()));
            map.insert(k.clone(), value);
        }
        return Ok(Value::Object(map));
    }
    Err(GraphError::new(400, 100, "(#100) The parameter recipient is required").reply())
}

// ---- Helpers -----------------------------------------------------------------------------------

fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Fields of a urlencoded or multipart (`curl -F`, as the docs use) body.
fn form_fields(headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => pairs(body),
        "multipart/form-data" => {
            let boundary = content_type.split(';').skip(1).find_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim().eq_ignore_ascii_case("boundary")).then(|| v.trim().trim_matches('"'))
            });
            boundary.map(|b| multipart(body, b)).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// Text parts of a multipart body, enough for `curl -F name=value`.
fn multipart(body: &[u8], boundary: &str) -> Vec<(String, String)> {
    let body = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    for part in body.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head.lines().find_map(|line| {
            let (h, rest) = line.split_once(':')?;
            if !h.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            let start = rest.find("name=\"")? + "name=\"".len();
            let len = rest[start..].find('"')?;
            Some(rest[start..start + len].to_owned())
        });
        if let Some(name) = name {
            let value = value.strip_suffix("\r\n").unwrap_or(value);
            out.push((name, value.to_owned()));
        }
    }
    out
}

/// Random `[A-Za-z0-9]` text for codes, tokens, ids and trace ids.
pub(crate) fn random_alnum(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_v_digits_dot_digits() {
        assert!(is_version("v25.0"));
        assert!(is_version("v3.10"));
        assert!(!is_version("v25"));
        assert!(!is_version("25.0"));
        assert!(!is_version("v.0"));
        assert!(!is_version("me"));
    }

    #[test]
    fn routes_versioned_and_unversioned_graph_paths() {
        let r = route(&Method::POST, "/v25.0/17841400538867190/messages");
        assert_eq!(r.endpoint, Endpoint::Messages);
        assert_eq!(r.node.as_deref(), Some("17841400538867190"));
        assert_eq!(r.graph_version.as_deref(), Some("v25.0"));
        assert_eq!(
            route(&Method::GET, "/access_token").endpoint,
            Endpoint::LongLivedExchange
        );
        assert_eq!(route(&Method::GET, "/v22.0/me").endpoint, Endpoint::Me);
        let r = route(
            &Method::DELETE,
            "/v26.0/17841400538867190/messenger_profile",
        );
        assert_eq!(r.endpoint, Endpoint::MessengerProfile);
        assert_eq!(r.node.as_deref(), Some("17841400538867190"));
        assert_eq!(
            route(&Method::GET, "/v22.0/me/messages").endpoint,
            Endpoint::Unknown
        );
        assert_eq!(
            route(&Method::GET, "/oauth/access_token").endpoint,
            Endpoint::Unknown
        );
        assert!(
            route(&Method::GET, "/oauth/authorize")
                .graph_version
                .is_none()
        );
    }

    #[test]
    fn multipart_text_fields_are_read() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"code\"\r\n\r\nabc\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\nauthorization_code\r\n\
                    --XyZ--\r\n";
        assert_eq!(
            multipart(body.as_bytes(), "XyZ"),
            vec![
                ("code".to_owned(), "abc".to_owned()),
                ("grant_type".to_owned(), "authorization_code".to_owned())
            ]
        );
    }
}
