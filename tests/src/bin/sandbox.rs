//! The local Instagram simulator: runs ingress and worker against the fake Instagram (and the
//! offline catalog-aware model unless `OPENAI_API_KEY` and `OPENAI_BASE_URL` are set), creates a
//! demo merchant with a small catalog, connects its account through the real OAuth flow, and lets
//! you chat as a customer. Each line goes through the signed webhook and the worker; the reply is
//! what the customer would see. Started by `scripts/sandbox`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::Parser;
use igsales_tests::stack::{RealModel, Stack, StackConfig};

#[derive(Parser)]
struct Args {
    /// The app's login role on a migrated database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// A CSV or JSON catalog for the demo merchant.
    #[arg(long, default_value = "scripts/demo-catalog-pt.csv")]
    catalog: String,
    #[arg(long, default_value = "1177001234567890")]
    customer: String,
    /// Where the DM thread page is served (http://127.0.0.1:PORT/); 0 picks a free port.
    #[arg(long, default_value_t = 8088)]
    page_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let model = match (
        std::env::var("OPENAI_API_KEY"),
        std::env::var("OPENAI_BASE_URL"),
    ) {
        (Ok(api_key), Ok(base_url)) if !api_key.is_empty() && !base_url.is_empty() => {
            Some(RealModel {
                base_url,
                api_key,
                model: std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into()),
            })
        }
        _ => None,
    };
    let using = if model.is_some() {
        "your OpenAI-compatible model"
    } else {
        "the offline catalog responder"
    };
    let stack = Stack::start(StackConfig {
        database_url: args.database_url.clone(),
        redis_url: args.redis_url.clone(),
        model,
        worker_env: vec![],
    })
    .await?;
    let merchant = stack
        .worker_cli(&[
            "merchant",
            "create",
            "--name",
            "Loja Azul",
            "--persona",
            "Você é a assistente da Loja Azul: simpática, breve e honesta sobre preço e estoque.",
        ])?
        .trim()
        .to_owned();
    stack.worker_cli(&["catalog", "import", "--merchant", &merchant, &args.catalog])?;
    let redirect = stack.connect_account(&merchant).await?;
    anyhow::ensure!(
        !redirect.contains("error="),
        "connecting the demo account failed: {redirect}"
    );
    igsales_tests::sandbox_page::set_up_demo_post(&stack, &merchant)?;
    let stack = std::sync::Arc::new(stack);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.page_port)).await?;
    let page = format!("http://{}/", listener.local_addr()?);
    let app = igsales_tests::sandbox_page::router(stack.clone(), &args.customer);
    tokio::spawn(async move { axum::serve(listener, app).await });
    eprintln!(
        "sandbox ready: merchant {merchant}, Instagram @{} connected, replies by {using}.\n\
         The DM thread as the customer sees it (cards, quick replies, the demo post): {page}\n\
         Type a message as a customer, or `/comment TEXT` to comment on the demo post \
         (Ctrl-D to quit).",
        stack.account.username
    );

    let interactive = std::io::stdin().is_terminal();
    let mut seen = 0;
    let stdin = std::io::stdin();
    loop {
        if interactive {
            print!("you> ");
            std::io::stdout().flush()?;
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if !interactive {
            println!("you> {text}");
        }
        if let Some(comment) = text.strip_prefix("/comment ").map(str::trim) {
            comment_on_post(&stack, &args.customer, comment).await?;
            seen = stack.replies_to(&args.customer);
            continue;
        }
        let status = stack.send_dm(&args.customer, text).await?;
        if status != 200 {
            println!("(the webhook answered HTTP {status})");
            continue;
        }
        match stack
            .next_reply(&args.customer, seen, Duration::from_secs(30))
            .await
        {
            Some(reply) => {
                seen = stack.replies_to(&args.customer);
                println!("@{}> {reply}", stack.account.username);
                // The card message follows the text a moment later; the page shows it whole.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let all = stack.messages_to(&args.customer);
                if let Some(last) = all.last().filter(|m| m.get("text").is_none()) {
                    print_cards(last);
                } else if let Some(last) = all.last() {
                    print_quick_replies(last);
                }
            }
            None => println!("(no reply: the assistant may be paused, or waiting for a person)"),
        }
    }
    Ok(())
}

/// A comment under the demo post: its private reply (in the DM thread) and public reply.
async fn comment_on_post(stack: &Stack, customer: &str, text: &str) -> anyhow::Result<()> {
    let (id, status) =
        igsales_tests::sandbox_page::comment_on_demo_post(stack, customer, text).await?;
    if status != 200 {
        println!("(the webhook answered HTTP {status})");
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let found = stack
            .fake
            .private_replies()
            .into_iter()
            .find(|m| m.comment_id.as_deref() == Some(id.as_str()));
        if found.is_some() || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(reply) = reply else {
        println!("(no private reply: comments may be off, or the comment matched no rule)");
        return Ok(());
    };
    println!(
        "@{} (private reply to your comment)> {}",
        stack.account.username,
        reply.text.unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for r in stack
        .fake
        .public_replies()
        .iter()
        .filter(|r| r.comment_id == id)
    {
        println!(
            "@{} (under your comment)> {}",
            stack.account.username, r.text
        );
    }
    Ok(())
}

/// A card message in the terminal: one line a card, then the quick replies.
fn print_cards(message: &serde_json::Value) {
    let elements = message["attachment"]["payload"]["elements"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for e in elements {
        let buttons: Vec<&str> = e["buttons"]
            .as_array()
            .map(|b| b.iter().filter_map(|b| b["title"].as_str()).collect())
            .unwrap_or_default();
        println!(
            "   [card] {} — {} [{}]",
            e["title"].as_str().unwrap_or(""),
            e["subtitle"].as_str().unwrap_or(""),
            buttons.join(" | ")
        );
    }
    print_quick_replies(message);
}

fn print_quick_replies(message: &serde_json::Value) {
    if let Some(q) = message["quick_replies"].as_array() {
        let titles: Vec<&str> = q.iter().filter_map(|q| q["title"].as_str()).collect();
        if !titles.is_empty() {
            println!("   [quick replies] {}", titles.join(" · "));
        }
    }
}
