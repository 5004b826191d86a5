//! Operators' commands for tokens, accounts and conversations.

use std::time::Duration;

use anyhow::{Context as _, bail};
use diesel_async::AsyncPgConnection;
use igsales_config::{DbSettings, RedisSettings};
use igsales_meta::MetaClient;
use igsales_schema::accounts::{self, AccountError};
use igsales_schema::{Db, DbError, MerchantId, Vault, conversations};

use super::Access;

/// `tokens refresh`: enqueues `refresh_token` for one merchant's accounts or for all due.
pub async fn tokens_refresh(
    db: &DbSettings,
    redis: &RedisSettings,
    merchant: Option<MerchantId>,
    window: Duration,
) -> anyhow::Result<()> {
    let db = Db::connect(db).await?;
    let redis = igsales_jobs::redis_conn::connect(redis).await?;
    let targets: Vec<(MerchantId, String)> = match merchant {
        Some(m) => db
            .as_merchant(m, async move |c: &AsyncPgConnection| {
                Ok::<_, DbError>(accounts::list(c).await?)
            })
            .await?
            .into_iter()
            .filter(|a| a.token_expires_at.is_some())
            .map(|a| (m, a.instagram_page_id))
            .collect(),
        None => {
            let window = chrono::Duration::from_std(window).context("window")?;
            crate::handlers::tokens::due_accounts(&db, window).await?
        }
    };
    let n = crate::handlers::tokens::enqueue_refreshes(redis, &targets).await?;
    println!("enqueued {n} refresh_token job(s)");
    Ok(())
}

async fn connected(db: &Db, merchant: MerchantId) -> anyhow::Result<Vec<String>> {
    Ok(db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(accounts::list(c).await?)
        })
        .await?
        .into_iter()
        .filter(|a| a.token_expires_at.is_some())
        .map(|a| a.instagram_page_id)
        .collect())
}

/// `accounts resubscribe`: subscribes the webhooks again (after Meta disabled them).
pub async fn accounts_resubscribe(
    access: &Access,
    merchant: Option<MerchantId>,
) -> anyhow::Result<()> {
    let db = Db::connect(&access.db).await?;
    let vault = Vault::new(&access.keys.ring);
    let meta = MetaClient::new(&access.graph, access.dns.cache);
    let merchants = match merchant {
        Some(m) => vec![m],
        None => db.merchant_ids().await?,
    };
    let (mut done, mut failed) = (0, Vec::new());
    for m in merchants {
        for account in connected(&db, m).await? {
            let (v, a) = (&vault, account.clone());
            let token = db
                .as_merchant(m, async move |c: &AsyncPgConnection| {
                    accounts::token(c, v, m, &a).await
                })
                .await;
            let result = match token {
                Ok(t) => meta
                    .subscribe(&t, igsales_meta::webhook::SUBSCRIBED_FIELDS)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let result = match result {
                Ok(()) => {
                    let a = account.clone();
                    db.as_merchant(m, async move |c: &AsyncPgConnection| {
                        Ok::<_, igsales_schema::DbError>(accounts::mark_subscribed(c, &a).await?)
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    done += 1;
                    eprintln!("merchant {m} account {account}: subscribed");
                }
                Err(e) => {
                    eprintln!("merchant {m} account {account}: failed: {e}");
                    failed.push(format!("{m}/{account}"));
                }
            }
        }
    }
    println!("resubscribed {done} account(s); {} failed", failed.len());
    if !failed.is_empty() {
        bail!("could not resubscribe: {}", failed.join(", "));
    }
    Ok(())
}

/// `merchant ice-breakers`: sets `breakers` (already checked against Meta's limits) on every
/// connected account of the merchant, or clears them when there are none. Each account is
/// tried; any failure is named and makes the command fail.
pub async fn merchant_ice_breakers(
    access: &Access,
    merchant: MerchantId,
    breakers: &[igsales_meta::IceBreaker],
) -> anyhow::Result<()> {
    let db = Db::connect(&access.db).await?;
    let exists = db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(
                igsales_schema::merchants::find(c, merchant)
                    .await?
                    .is_some(),
            )
        })
        .await?;
    if !exists {
        bail!("merchant {merchant} not found");
    }
    let pages = connected(&db, merchant).await?;
    if pages.is_empty() {
        bail!("merchant {merchant} has no connected Instagram account: nothing to set");
    }
    let vault = Vault::new(&access.keys.ring);
    let meta = MetaClient::new(&access.graph, access.dns.cache);
    let mut failed = Vec::new();
    for account in &pages {
        let (v, a) = (&vault, account.clone());
        let token = db
            .as_merchant(merchant, async move |c: &AsyncPgConnection| {
                accounts::token(c, v, merchant, &a).await
            })
            .await;
        let result = match token {
            Ok(t) if breakers.is_empty() => meta.clear_ice_breakers(&t, account).await,
            Ok(t) => meta.set_ice_breakers(&t, account, breakers).await,
            Err(e) => {
                eprintln!("account {account}: failed: {e}");
                failed.push(account.clone());
                continue;
            }
        };
        match result {
            Ok(()) if breakers.is_empty() => println!("account {account}: ice breakers cleared"),
            Ok(()) => println!(
                "account {account}: {} ice breaker(s) set: {}",
                breakers.len(),
                breakers
                    .iter()
                    .map(|b| format!("\"{}\"", b.question))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => {
                eprintln!("account {account}: failed: {}", graph_reason(&e));
                failed.push(account.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} account(s) failed: {}",
            failed.len(),
            pages.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The error with Graph's own message when Meta sent one (it says which rule was broken and
/// never holds the token).
fn graph_reason(e: &igsales_meta::MetaError) -> String {
    match e {
        igsales_meta::MetaError::Graph { error, .. } if !error.message.is_empty() => {
            format!("{e}: {}", error.message)
        }
        _ => e.to_string(),
    }
}

/// `accounts disconnect`: unsubscribes (best effort) and forgets the token.
pub async fn accounts_disconnect(
    access: &Access,
    merchant: MerchantId,
    account: &str,
) -> anyhow::Result<()> {
    let db = Db::connect(&access.db).await?;
    let vault = Vault::new(&access.keys.ring);
    let (v, a) = (&vault, account.to_owned());
    match db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            accounts::token(c, v, merchant, &a).await
        })
        .await
    {
        Ok(token) => {
            if let Err(e) = MetaClient::new(&access.graph, access.dns.cache)
                .unsubscribe(&token)
                .await
            {
                eprintln!(
                    "warning: unsubscribing at Meta failed ({e}); the token is deleted anyway"
                );
            }
        }
        Err(AccountError::NotFound) => {}
        Err(e) => eprintln!("warning: the stored token is unusable ({e}); deleting it"),
    }
    let a = account.to_owned();
    let found = db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(accounts::disconnect(c, &a).await?)
        })
        .await?;
    if !found {
        bail!("merchant {merchant} has no account {account}");
    }
    println!("disconnected account {account} of merchant {merchant}");
    Ok(())
}

/// `conversation resume`: hands a conversation back to the assistant.
pub async fn conversation_resume(
    db: &DbSettings,
    merchant: MerchantId,
    customer: &str,
) -> anyhow::Result<()> {
    let db = Db::connect(db).await?;
    let c2 = customer.to_owned();
    let n = db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(conversations::resume(c, &c2).await?)
        })
        .await?;
    if n == 0 {
        bail!("merchant {merchant} has no conversation with {customer}");
    }
    println!("resumed {n} conversation(s) with {customer}: the assistant answers again");
    Ok(())
}
