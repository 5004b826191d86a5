//! The sandbox's DM thread page: what the customer sees on Instagram, fed by what the fake
//! Instagram received (text bubbles, generic-template product cards with their images and
//! buttons, quick-reply chips), with a box to write as the customer and taps that go back to the
//! ingress as Meta would deliver them (a postback webhook, a message with `quick_reply.payload`).
//! Above the thread, the shop's demo post: a comment written there goes to the ingress as a
//! signed `comments` webhook, and its private reply arrives in the thread (the public reply
//! under the comment).
//! Served by `scripts/sandbox`; `tests/tests/sandbox_page.rs` drives it in headless Chromium.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::fake_meta::webhook as wh;
use crate::stack::{IG_SECRET, Stack};

/// One thing the customer did, as the page shows it.
#[derive(Clone)]
struct Said {
    at_ms: i64,
    text: String,
}

/// A comment the customer wrote under the demo post.
#[derive(Clone)]
struct Commented {
    id: String,
    text: String,
}

struct Page {
    stack: Arc<Stack>,
    customer: String,
    said: Mutex<Vec<Said>>,
    comments: Mutex<Vec<Commented>>,
}

/// The demo post's media id, its caption, and the product linked to it.
pub const DEMO_POST: &str = "17900000000004242";
pub const DEMO_POST_CAPTION: &str =
    "Chegou a caneca de cerâmica azul! Comente QUERO que te mando o preço no direct 💙";
const DEMO_POST_SKU: &str = "CAN-CER-AZ";
/// What the shop answers under a comment, once its private reply went out.
pub const DEMO_PUBLIC_REPLY: &str = "Te chamei no direct! 💙";

/// Links the demo post to its product and turns comments on for it, with a public reply.
pub fn set_up_demo_post(stack: &Stack, merchant: &str) -> anyhow::Result<()> {
    stack.worker_cli(&[
        "catalog",
        "link",
        "--merchant",
        merchant,
        "--media",
        DEMO_POST,
        "--sku",
        DEMO_POST_SKU,
    ])?;
    stack.worker_cli(&[
        "merchant",
        "comments",
        "--merchant",
        merchant,
        "--on",
        "--media",
        DEMO_POST,
        "--public-reply",
        DEMO_PUBLIC_REPLY,
    ])?;
    Ok(())
}

/// `customer` comments `text` under the demo post, delivered as Meta delivers it. The
/// comment's id and the webhook's HTTP status.
pub async fn comment_on_demo_post(
    stack: &Stack,
    customer: &str,
    text: &str,
) -> anyhow::Result<(String, u16)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000_000;
    let id = format!("179{:08}{n:06}", now_ms().rem_euclid(100_000_000));
    let body = stack.fake.comment(
        &stack.account.user_id,
        &id,
        customer,
        DEMO_POST,
        text,
        None,
        std::time::Duration::ZERO,
    );
    let status = stack.deliver(body).await?;
    Ok((id, status))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The page's routes, chatting as `customer` with the stack's account.
pub fn router(stack: Arc<Stack>, customer: &str) -> Router {
    let page = Arc::new(Page {
        stack,
        customer: customer.to_owned(),
        said: Mutex::new(Vec::new()),
        comments: Mutex::new(Vec::new()),
    });
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/thread", get(thread))
        .route("/send", post(send))
        .route("/tap", post(tap))
        .route("/comment", post(comment))
        .with_state(page)
}

/// The conversation in order: the customer's lines and every message the account sent them
/// (the Send API bodies the fake Instagram accepted, as sent).
async fn thread(State(page): State<Arc<Page>>) -> Json<Value> {
    let mut items: Vec<(i64, Value)> = page
        .said
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|s| (s.at_ms, json!({"from": "customer", "text": s.text})))
        .collect();
    let comments = page
        .comments
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for m in page.stack.fake.sent_messages() {
        if m.recipient_id == page.customer {
            // A private reply shows which comment it answers, as Instagram does.
            let about = m
                .comment_id
                .as_ref()
                .and_then(|id| comments.iter().find(|c| &c.id == id))
                .map(|c| c.text.clone());
            items.push((
                m.at_ms,
                json!({
                    "from": "account",
                    "message": m.body.get("message").cloned().unwrap_or(Value::Null),
                    "comment": about,
                }),
            ));
        }
    }
    items.sort_by_key(|(at, _)| *at);
    let public = page.stack.fake.public_replies();
    let under_post: Vec<Value> = comments
        .iter()
        .map(|c| {
            let replies: Vec<&str> = public
                .iter()
                .filter(|r| r.comment_id == c.id)
                .map(|r| r.text.as_str())
                .collect();
            json!({"text": c.text, "replies": replies})
        })
        .collect();
    Json(json!({
        "account": page.stack.account.username,
        "post": {"caption": DEMO_POST_CAPTION, "comments": under_post},
        "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
}

/// `{"text": "…"}`: a comment under the demo post.
async fn comment(State(page): State<Arc<Page>>, Json(body): Json<Value>) -> Response {
    let Some(text) = body["text"]
        .as_str()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return (StatusCode::BAD_REQUEST, "text is required").into_response();
    };
    match comment_on_demo_post(&page.stack, &page.customer, text).await {
        Ok((id, status)) => {
            page.comments
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Commented {
                    id,
                    text: text.to_owned(),
                });
            (StatusCode::OK, Json(json!({ "webhook_status": status }))).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

async fn deliver(page: &Page, event: Value, shown: String) -> Response {
    let account = page.stack.account.user_id.clone();
    let body = wh::envelope(&[wh::messaging_entry(&account, now_ms(), vec![event])]);
    let url = format!("{}/webhooks/instagram", page.stack.base);
    page.said
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Said {
            at_ms: now_ms(),
            text: shown,
        });
    match tokio::task::spawn_blocking(move || wh::deliver(&url, IG_SECRET, &body)).await {
        Ok((status, _)) => {
            (StatusCode::OK, Json(json!({ "webhook_status": status }))).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `{"text": "…"}`: a DM from the customer.
async fn send(State(page): State<Arc<Page>>, Json(body): Json<Value>) -> Response {
    let Some(text) = body["text"]
        .as_str()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return (StatusCode::BAD_REQUEST, "text is required").into_response();
    };
    let mid = format!("mid-{}", uuid::Uuid::new_v4().simple());
    let account = page.stack.account.user_id.clone();
    let event = wh::text_message(&page.customer, &account, &mid, text, now_ms());
    deliver(&page, event, text.to_owned()).await
}

/// `{"kind": "postback" | "quick_reply", "title": "…", "payload": "…"}`: a tap on a card's
/// postback button or on a quick-reply chip, delivered as Meta delivers each.
async fn tap(State(page): State<Arc<Page>>, Json(body): Json<Value>) -> Response {
    let (Some(kind), Some(title), Some(payload)) = (
        body["kind"].as_str(),
        body["title"].as_str(),
        body["payload"].as_str(),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            "kind, title and payload are required",
        )
            .into_response();
    };
    let mid = format!("mid-{}", uuid::Uuid::new_v4().simple());
    let account = page.stack.account.user_id.clone();
    let ts = now_ms();
    let event = match kind {
        "postback" => wh::postback(&page.customer, &account, &mid, title, payload, ts),
        // A tapped chip is a message whose text is the chip's title, with its payload.
        "quick_reply" => json!({
            "sender": {"id": page.customer},
            "recipient": {"id": account},
            "timestamp": ts,
            "message": {"mid": mid, "text": title, "quick_reply": {"payload": payload}},
        }),
        _ => return (StatusCode::BAD_REQUEST, "kind is postback or quick_reply").into_response(),
    };
    deliver(&page, event, title.to_owned()).await
}

/// The page itself: no build step, no external resources (the sandbox runs offline).
const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>igsales sandbox — DM thread</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #fafafa; }
  header { padding: 12px 16px; border-bottom: 1px solid #ddd; background: #fff; font-weight: 600; }
  #thread { padding: 16px; display: flex; flex-direction: column; gap: 8px; padding-bottom: 96px; }
  .bubble { max-width: 70%; padding: 8px 12px; border-radius: 18px; white-space: pre-wrap; }
  .customer { align-self: flex-end; background: #3797f0; color: #fff; }
  .account { align-self: flex-start; background: #efefef; }
  .cards { display: flex; gap: 8px; overflow-x: auto; align-self: flex-start; max-width: 100%; }
  .card { width: 220px; flex: none; border: 1px solid #ddd; border-radius: 12px; background: #fff; overflow: hidden; }
  .card img { width: 100%; height: 140px; object-fit: cover; background: #eee; display: block; }
  .card .title { font-weight: 600; padding: 8px 10px 0; }
  .card .subtitle { color: #555; padding: 2px 10px 8px; font-size: 14px; }
  .card a, .card button { display: block; width: 100%; box-sizing: border-box; padding: 8px; border: 0;
    border-top: 1px solid #eee; background: #fff; color: #0095f6; text-align: center; font-size: 14px;
    text-decoration: none; cursor: pointer; }
  .chips { display: flex; gap: 6px; flex-wrap: wrap; align-self: flex-end; }
  .chip { border: 1px solid #3797f0; color: #3797f0; background: #fff; border-radius: 16px; padding: 6px 12px; cursor: pointer; }
  form { position: fixed; bottom: 0; left: 0; right: 0; display: flex; gap: 8px; padding: 12px; background: #fff; border-top: 1px solid #ddd; }
  input { flex: 1; padding: 10px 14px; border: 1px solid #ccc; border-radius: 20px; font-size: 15px; }
  #post { margin: 16px; border: 1px solid #ddd; border-radius: 12px; background: #fff; max-width: 420px; }
  #post .picture { height: 120px; background: #3797f0; color: #fff; font-size: 48px; display: flex; align-items: center; justify-content: center; border-radius: 12px 12px 0 0; }
  #post .caption, #post .comment { padding: 8px 12px; }
  #post .public { padding: 0 12px 8px 28px; color: #555; }
  #post .comment-form { position: static; border: 0; padding: 8px 12px; }
  .about { align-self: flex-start; color: #777; font-size: 12px; margin-bottom: -6px; }
</style></head>
<body>
<header id="who">DM</header>
<section id="post" data-testid="post"><div class="picture">☕</div>
<div class="caption" id="caption"></div><div id="comments"></div>
<form id="commenter" class="comment-form"><input id="comment-text" data-testid="comment-box" placeholder="Comment on this post…" autocomplete="off">
<button type="submit" data-testid="comment-send">Post</button></form></section>
<div id="thread" data-testid="thread"></div>
<form id="composer"><input id="text" data-testid="composer" placeholder="Message…" autocomplete="off">
<button type="submit" data-testid="send">Send</button></form>
<script>
const thread = document.getElementById('thread');
let last = '';
function post(path, body) {
  return fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function card(element) {
  const c = el('div', 'card');
  c.dataset.testid = 'card';
  if (element.image_url) { const img = el('img'); img.src = element.image_url; img.alt = element.title || ''; c.appendChild(img); }
  c.appendChild(el('div', 'title', element.title || ''));
  if (element.subtitle) c.appendChild(el('div', 'subtitle', element.subtitle));
  for (const b of element.buttons || []) {
    if (b.type === 'web_url') {
      const a = el('a', '', b.title); a.href = b.url; a.target = '_blank'; a.rel = 'noopener';
      a.dataset.testid = 'card-link'; c.appendChild(a);
    } else if (b.type === 'postback') {
      const btn = el('button', '', b.title); btn.dataset.testid = 'card-postback';
      btn.onclick = () => post('/tap', {kind: 'postback', title: b.title, payload: b.payload});
      c.appendChild(btn);
    }
  }
  return c;
}
function renderPost(post) {
  document.getElementById('caption').textContent = post.caption;
  const list = document.getElementById('comments');
  list.replaceChildren();
  for (const c of post.comments) {
    const e = el('div', 'comment', 'you: ' + c.text); e.dataset.testid = 'comment'; list.appendChild(e);
    for (const r of c.replies) { const p = el('div', 'public', r); p.dataset.testid = 'public-reply'; list.appendChild(p); }
  }
}
function render(data) {
  document.getElementById('who').textContent = '@' + data.account;
  renderPost(data.post);
  thread.replaceChildren();
  data.items.forEach((item, i) => {
    if (item.from === 'customer') {
      const b = el('div', 'bubble customer', item.text); b.dataset.testid = 'customer-bubble';
      thread.appendChild(b); return;
    }
    const m = item.message || {};
    if (item.comment) {
      const a = el('div', 'about', 'Replied to your comment: ' + item.comment); a.dataset.testid = 'private-reply-about';
      thread.appendChild(a);
    }
    if (m.text) { const b = el('div', 'bubble account', m.text); b.dataset.testid = 'account-bubble'; thread.appendChild(b); }
    const p = m.attachment && m.attachment.payload;
    if (m.attachment && m.attachment.type === 'template' && p && p.template_type === 'generic') {
      const row = el('div', 'cards'); row.dataset.testid = 'cards';
      for (const e of p.elements || []) row.appendChild(card(e));
      thread.appendChild(row);
    }
    // Chips belong to the newest message only, as on Instagram.
    if (m.quick_replies && i === data.items.length - 1) {
      const chips = el('div', 'chips');
      for (const q of m.quick_replies) {
        const c = el('button', 'chip', q.title); c.dataset.testid = 'quick-reply';
        c.onclick = () => post('/tap', {kind: 'quick_reply', title: q.title, payload: q.payload});
        chips.appendChild(c);
      }
      thread.appendChild(chips);
    }
  });
}
async function refresh() {
  try {
    const r = await fetch('/thread');
    const text = await r.text();
    if (text !== last) { last = text; render(JSON.parse(text)); window.scrollTo(0, document.body.scrollHeight); }
  } catch (e) { /* the sandbox is restarting */ }
}
document.getElementById('composer').onsubmit = async (ev) => {
  ev.preventDefault();
  const input = document.getElementById('text');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  await post('/send', {text});
  refresh();
};
document.getElementById('commenter').onsubmit = async (ev) => {
  ev.preventDefault();
  const input = document.getElementById('comment-text');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  await post('/comment', {text});
  refresh();
};
setInterval(refresh, 400);
refresh();
</script>
</body></html>
"#;
