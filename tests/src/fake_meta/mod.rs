//! A fake Meta: Instagram Login OAuth plus the Graph API endpoints the service calls, served
//! over real HTTP on one local host, behaving as `shared/meta-platform.md` documents (status
//! codes, both error envelopes, headers, both token-response shapes).
//!
//! Tests start it with [`FakeMeta::start`], point the service's Instagram/Graph base URLs at
//! [`FakeMeta::base_url`], then inspect what was called ([`FakeMeta::requests`],
//! [`FakeMeta::sent_messages`]) and script trouble ([`FakeMeta::fail_next`]). The webhook side
//! (signing and delivering payloads to the service) is in [`webhook`].
//!
//! Paths served (the Graph version segment is any `v<digits>.<digits>`, and optional):
//!
//! | method | path | endpoint |
//! |---|---|---|
//! | GET | `/oauth/authorize` | [`Endpoint::Authorize`] |
//! | POST | `/oauth/access_token` | [`Endpoint::CodeExchange`] |
//! | GET | `[/{ver}]/access_token` | [`Endpoint::LongLivedExchange`] |
//! | GET | `[/{ver}]/refresh_access_token` | [`Endpoint::Refresh`] |
//! | GET | `[/{ver}]/me`, `[/{ver}]/{ig_id}` | [`Endpoint::Me`] |
//! | GET, POST, DELETE | `[/{ver}]/{me or ig_id}/subscribed_apps` | [`Endpoint::SubscribedApps`] |
//! | POST | `[/{ver}]/{me or ig_id}/messages` | [`Endpoint::Messages`] |
//! | POST | `[/{ver}]/{comment_id}/replies` | [`Endpoint::CommentReplies`] |
//! | GET, POST, DELETE | `[/{ver}]/{me or ig_id}/messenger_profile` | [`Endpoint::MessengerProfile`] |

mod failure;
mod server;
pub mod webhook;

use crate::served::Served;
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use failure::Failure;

/// The Instagram professional account that "logs in" through the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeAccount {
    /// The IG professional account id: webhook `entry.id`, `/me` → `user_id`.
    pub user_id: String,
    /// The app-scoped id: `/me` → `id` and the code exchange's `user_id`. Above 2^53 by default,
    /// so a client that parses it as `f64` loses digits.
    pub app_scoped_id: String,
    pub username: String,
}

impl Default for FakeAccount {
    fn default() -> Self {
        Self {
            user_id: "17841400538867190".to_owned(),
            app_scoped_id: "27640875392278831".to_owned(),
            username: "minhaloja".to_owned(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FakeMetaConfig {
    /// The Instagram app id expected as `client_id`.
    pub client_id: String,
    /// The Instagram app secret expected as `client_secret`.
    pub client_secret: String,
    /// Registered OAuth redirect URIs, matched exactly; empty accepts any.
    pub redirect_uris: Vec<String>,
    /// Who logs in first (see [`FakeMeta::set_account`]).
    pub account: FakeAccount,
}

impl Default for FakeMetaConfig {
    fn default() -> Self {
        Self {
            client_id: "990602627938098".to_owned(),
            client_secret: "fake-ig-app-secret".to_owned(),
            redirect_uris: Vec::new(),
            account: FakeAccount::default(),
        }
    }
}

/// The code-exchange response shape; meta-platform.md §3.1 documents `DataArray` but clients
/// observe `Flat`, so the service must accept both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenShape {
    /// `{"access_token":…,"user_id":<bare integer>,"permissions":[…]}`
    #[default]
    Flat,
    /// `{"data":[{"access_token":…,"user_id":"<string>","permissions":"a,b"}]}`
    DataArray,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Authorize,
    CodeExchange,
    LongLivedExchange,
    Refresh,
    Me,
    SubscribedApps,
    Messages,
    /// `POST /{comment-id}/replies`.
    CommentReplies,
    /// `GET`, `POST`, `DELETE /{ig-user-id}/messenger_profile` (ice breakers).
    MessengerProfile,
    /// Any path or method the fake does not serve (answered with a Graph error); recorded so a
    /// test can see what the service called by mistake.
    Unknown,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub endpoint: Endpoint,
    pub method: String,
    pub path: String,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Decoded fields of a urlencoded or multipart body, in order; empty otherwise.
    pub form: Vec<(String, String)>,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        find(&self.query, name)
    }

    pub fn form_field(&self, name: &str) -> Option<&str> {
        find(&self.form, name)
    }

    /// `name` in lowercase.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A message the Send API accepted.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// The path's account id, or the token's `user_id` when the path said `me`.
    pub account: String,
    pub recipient_id: String,
    pub text: Option<String>,
    /// The whole request body as parsed.
    pub body: serde_json::Value,
    pub message_id: String,
    /// When the fake took it (Unix ms).
    pub at_ms: i64,
    /// The comment a private reply answered (`recipient.comment_id`); `recipient_id` is then
    /// the comment's author.
    pub comment_id: Option<String>,
}

/// A comment on one of an account's posts or reels, as the fake knows it.
#[derive(Clone, Debug)]
pub struct FakeComment {
    /// The account whose media it is under.
    pub account: String,
    pub author: String,
    pub media_id: String,
    pub parent_id: Option<String>,
    pub created: Instant,
    pub private_replied: bool,
}

/// A public reply posted under a comment.
#[derive(Clone, Debug)]
pub struct PublicReply {
    pub account: String,
    pub comment_id: String,
    pub text: String,
    pub id: String,
}

/// Handle to a running fake; clones share it. The server stops when the last clone drops.
#[derive(Clone)]
pub struct FakeMeta {
    inner: Arc<Served<Shared>>,
}

/// What the server task and the handles share.
pub(crate) struct Shared {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) redirect_uris: Vec<String>,
    state: Mutex<State>,
}

impl Shared {
    /// Never held across an await, so a poisoned lock only means a test already panicked.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) account: FakeAccount,
    pub(crate) token_shape: TokenShape,
    pub(crate) deny_next: bool,
    pub(crate) latency: Duration,
    pub(crate) queued_failures: HashMap<Endpoint, VecDeque<Failure>>,
    pub(crate) standing_failures: HashMap<Endpoint, Failure>,
    pub(crate) requests: Vec<Recorded>,
    pub(crate) codes: HashMap<String, CodeGrant>,
    pub(crate) tokens: HashMap<String, TokenGrant>,
    pub(crate) issued: Vec<String>,
    pub(crate) sent: Vec<SentMessage>,
    /// IG account user_id → subscribed fields.
    pub(crate) subscriptions: HashMap<String, Vec<String>>,
    /// Where echoes of sent messages go (webhook URL, signing secret), if anywhere.
    pub(crate) echo_to: Option<(String, String)>,
    /// Where a newly subscribed account's first event goes (webhook URL, signing secret).
    pub(crate) first_event_to: Option<(String, String)>,
    /// Those first events: (mid, the webhook's HTTP status).
    pub(crate) first_events: Vec<(String, u16)>,
    /// Comment id → the comment.
    pub(crate) comments: HashMap<String, FakeComment>,
    pub(crate) public_replies: Vec<PublicReply>,
    /// Per account: the Send API calls of the last second, the private replies of the last
    /// hour (Meta's limits, enforced).
    pub(crate) send_calls: HashMap<String, VecDeque<Instant>>,
    pub(crate) private_reply_calls: HashMap<String, VecDeque<Instant>>,
    /// Calls refused for going over those limits.
    pub(crate) limit_breaches: usize,
    /// IG account user_id → its ice breakers (question, payload), in order.
    pub(crate) ice_breakers: HashMap<String, Vec<(String, String)>>,
}

impl State {
    pub(crate) fn take_failure(&mut self, endpoint: Endpoint) -> Option<Failure> {
        if let Some(f) = self
            .queued_failures
            .get_mut(&endpoint)
            .and_then(VecDeque::pop_front)
        {
            return Some(f);
        }
        self.standing_failures.get(&endpoint).cloned()
    }
}

pub(crate) struct CodeGrant {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) account: FakeAccount,
    pub(crate) permissions: Vec<String>,
    pub(crate) expires: Instant,
    pub(crate) used: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    ShortLived,
    LongLived,
}

#[derive(Clone)]
pub(crate) struct TokenGrant {
    pub(crate) kind: TokenKind,
    pub(crate) account: FakeAccount,
    pub(crate) permissions: Vec<String>,
    pub(crate) expires: Instant,
}

impl FakeMeta {
    /// Serves on 127.0.0.1 with an ephemeral port.
    pub async fn start(config: FakeMetaConfig) -> FakeMeta {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
            .await
            .expect("bind 127.0.0.1:0 for the fake Meta")
    }

    pub async fn start_on(addr: SocketAddr, config: FakeMetaConfig) -> std::io::Result<FakeMeta> {
        let shared = Arc::new(Shared {
            client_id: config.client_id,
            client_secret: config.client_secret,
            redirect_uris: config.redirect_uris,
            state: Mutex::new(State {
                account: config.account,
                ..State::default()
            }),
        });
        let app = server::router(shared.clone());
        Ok(FakeMeta {
            inner: Arc::new(Served::start(addr, shared, app, "fake-meta").await?),
        })
    }

    /// `http://127.0.0.1:PORT`, the base for the OAuth, authorize and Graph paths alike.
    pub fn base_url(&self) -> String {
        self.inner.base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.shared.state()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    pub fn requests_to(&self, endpoint: Endpoint) -> Vec<Recorded> {
        self.state()
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    pub fn set_token_shape(&self, shape: TokenShape) {
        self.state().token_shape = shape;
    }

    /// The account that the next authorization logs in as; codes and tokens already issued keep
    /// theirs.
    pub fn set_account(&self, account: FakeAccount) {
        self.state().account = account;
    }

    /// The next valid authorization redirects back with `error=access_denied`.
    pub fn deny_next_authorization(&self) {
        self.state().deny_next = true;
    }

    /// Queues `failure` as the answer to the next request to `endpoint` (FIFO, one each).
    pub fn fail_next(&self, endpoint: Endpoint, failure: Failure) {
        self.state()
            .queued_failures
            .entry(endpoint)
            .or_default()
            .push_back(failure);
    }

    /// Answers every request to `endpoint` with `failure` (after any queued ones) until cleared.
    pub fn fail_always(&self, endpoint: Endpoint, failure: Failure) {
        self.state().standing_failures.insert(endpoint, failure);
    }

    pub fn clear_failures(&self) {
        let mut state = self.state();
        state.queued_failures.clear();
        state.standing_failures.clear();
    }

    /// Delay added before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    pub fn sent_messages(&self) -> Vec<SentMessage> {
        self.state().sent.clone()
    }

    /// How many messages were sent (cheap enough to poll).
    pub fn sent_count(&self) -> usize {
        self.state().sent.len()
    }

    /// Every access token handed out, short- and long-lived, in order.
    /// A long-lived token for `account` with the permissions igsales asks for (messages and
    /// comments), as if it had connected earlier: tests that start from a connected account
    /// store this one.
    pub fn issue_long_lived_token(&self, account: &FakeAccount) -> String {
        let mut state = self.inner.shared.state();
        server::issue(
            &mut state,
            TokenKind::LongLived,
            account,
            &[
                "instagram_business_basic".to_owned(),
                "instagram_business_manage_messages".to_owned(),
                "instagram_business_manage_comments".to_owned(),
            ],
        )
    }

    /// Someone (`author`) comments `comment_id` on `media_id` of `account`, `age` ago (a reply
    /// within a thread when `parent_id` is set): the fake now knows the comment, and this is
    /// the `comments` webhook body Meta sends for it (IG Login's `changes[]` shape).
    #[allow(clippy::too_many_arguments)]
    pub fn comment(
        &self,
        account: &str,
        comment_id: &str,
        author: &str,
        media_id: &str,
        text: &str,
        parent_id: Option<&str>,
        age: Duration,
    ) -> String {
        let created = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.inner.shared.state().comments.insert(
            comment_id.to_owned(),
            FakeComment {
                account: account.to_owned(),
                author: author.to_owned(),
                media_id: media_id.to_owned(),
                parent_id: parent_id.map(str::to_owned),
                created,
                private_replied: false,
            },
        );
        let time_s = (webhook::now_ms() - age.as_millis() as i64) / 1000;
        webhook::envelope(&[webhook::comment_entry(
            account, time_s, comment_id, author, media_id, text, parent_id,
        )])
    }

    /// The private replies the fake accepted, in order.
    pub fn private_replies(&self) -> Vec<SentMessage> {
        self.sent_messages()
            .into_iter()
            .filter(|m| m.comment_id.is_some())
            .collect()
    }

    /// The public replies the fake accepted, in order.
    pub fn public_replies(&self) -> Vec<PublicReply> {
        self.inner.shared.state().public_replies.clone()
    }

    /// Calls refused for going over Meta's rate limits (the Send API's 100 a second per
    /// account, private replies' 750 an hour).
    pub fn limit_breaches(&self) -> usize {
        self.inner.shared.state().limit_breaches
    }

    /// Stops delivering echoes (as if Meta's were lost).
    pub fn stop_echoes(&self) {
        self.inner.shared.state().echo_to = None;
    }

    /// Delivers the echo of every accepted send to `webhook_url`, signed with `secret`, as Meta
    /// does for messages an account sends.
    pub fn deliver_echoes_to(&self, webhook_url: &str, secret: &str) {
        self.inner.shared.state().echo_to = Some((webhook_url.to_owned(), secret.to_owned()));
    }

    /// From now on, each new subscription is followed at once by a customer message for that
    /// account, delivered to `webhook_url` before the subscribe call is answered (as Meta may).
    pub fn deliver_first_events_to(&self, webhook_url: &str, secret: &str) {
        self.inner.shared.state().first_event_to =
            Some((webhook_url.to_owned(), secret.to_owned()));
    }

    /// The first events delivered so far: (mid, the status the webhook answered).
    pub fn first_events(&self) -> Vec<(String, u16)> {
        self.state().first_events.clone()
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    /// Makes `token` expired from now on: Graph calls with it get 190/463, and it can no longer be
    /// exchanged or refreshed.
    pub fn expire_token(&self, token: &str) {
        if let Some(grant) = self.state().tokens.get_mut(token) {
            grant.expires = Instant::now();
        }
    }

    /// The ice breakers (question, payload) the account's Messenger profile holds now, in
    /// order; none when never set or cleared.
    pub fn ice_breakers(&self, user_id: &str) -> Vec<(String, String)> {
        self.state()
            .ice_breakers
            .get(user_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The fields `user_id` is subscribed to, if it is subscribed.
    pub fn subscribed_fields(&self, user_id: &str) -> Option<Vec<String>> {
        self.state().subscriptions.get(user_id).cloned()
    }
}
