//! Merchants as tests seed them — a name, a persona, a catalog, a connected Instagram account
//! with its token sealed by a vault — written straight through the schema library in one
//! tenant transaction.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use igsales_config::Secret;
use igsales_schema::accounts::{self, AccountError, Connection};
use igsales_schema::products::Product;
use igsales_schema::{Db, MerchantId, Vault, merchants, products};

use crate::fake_meta::{FakeAccount, FakeMeta};

/// A merchant to create: a "Shop" without persona, catalog or account unless set.
pub struct Shop<'a> {
    pub name: &'a str,
    pub persona: Option<&'a str>,
    pub products: &'a [Product],
    pub account: Option<Account<'a>>,
}

impl<'a> Shop<'a> {
    pub fn named(name: &'a str) -> Shop<'a> {
        Shop {
            name,
            persona: None,
            products: &[],
            account: None,
        }
    }

    pub fn with_account(self, account: Account<'a>) -> Shop<'a> {
        Shop {
            account: Some(account),
            ..self
        }
    }
}

/// An Instagram account to connect, its token sealed by `vault`.
pub struct Account<'a> {
    pub vault: &'a Vault,
    pub page: &'a str,
    pub username: &'a str,
    pub token: &'a str,
    pub expires_at: DateTime<Utc>,
}

impl<'a> Account<'a> {
    /// Username "shop", the token good for 50 more days.
    pub fn new(vault: &'a Vault, page: &'a str, token: &'a str) -> Account<'a> {
        Account {
            vault,
            page,
            username: "shop",
            token,
            expires_at: Utc::now() + chrono::Duration::days(50),
        }
    }

    pub fn expires_in_days(self, days: i64) -> Account<'a> {
        Account {
            expires_at: Utc::now() + chrono::Duration::days(days),
            ..self
        }
    }
}

/// Creates merchant `m` as `shop` describes.
pub async fn seed(db: &Db, m: MerchantId, shop: &Shop<'_>) -> Result<(), AccountError> {
    db.as_merchant(m, async |c: &AsyncPgConnection| {
        merchants::create(c, m, shop.name, shop.persona).await?;
        products::upsert(c, m, shop.products, |_| {}).await?;
        match &shop.account {
            Some(account) => connect_on(c, m, account).await,
            None => Ok(()),
        }
    })
    .await
}

/// Connects `account` to merchant `m`, which exists already.
pub async fn connect(db: &Db, m: MerchantId, account: &Account<'_>) -> Result<(), AccountError> {
    db.as_merchant(m, async |c: &AsyncPgConnection| {
        connect_on(c, m, account).await
    })
    .await
}

async fn connect_on(
    c: &AsyncPgConnection,
    m: MerchantId,
    account: &Account<'_>,
) -> Result<(), AccountError> {
    accounts::connect(
        c,
        account.vault,
        m,
        &Connection {
            instagram_page_id: account.page,
            instagram_user_id: None,
            username: account.username,
            token: &Secret::new(account.token),
            expires_at: account.expires_at,
        },
    )
    .await?;
    // As after a whole connect flow: subscribed.
    accounts::mark_subscribed(c, account.page)
        .await
        .map_err(|e| AccountError::Db(e.into()))?;
    Ok(())
}

/// `n` shops, each with `catalog` products and an account whose token the fake Meta issued;
/// returns each merchant with its account (page) id. Page ids start with `prefix` and are
/// unique per call (the benchmarks and the chaos run need many).
pub async fn connected(
    db: &Db,
    vault: &Vault,
    fake: &FakeMeta,
    n: usize,
    catalog: usize,
    prefix: &str,
) -> anyhow::Result<Vec<(MerchantId, String)>> {
    let stamp = chrono::Utc::now().timestamp_millis() % 1_000_000 * 100;
    let mut made = Vec::new();
    for i in 0..n {
        let page = format!("{prefix}{:011}", stamp + i as i64);
        let account = FakeAccount {
            user_id: page.clone(),
            app_scoped_id: format!("2{i}"),
            username: format!("shop{i}"),
        };
        let token = fake.issue_long_lived_token(&account);
        let products: Vec<Product> = (0..catalog)
            .map(|n| Product {
                sku: format!("SKU-{n}"),
                name: format!("Product {n}"),
                description: "cotton".into(),
                tags: String::new(),
                price: "19.90".parse().expect("decimal"),
                currency: Some("BRL".into()),
                stock: Some(n as i32),
                url: None,
                image_url: None,
            })
            .collect();
        let m = MerchantId::new_random();
        let name = format!("Shop {i}");
        let shop = Shop {
            name: &name,
            persona: None,
            products: &products,
            account: Some(Account::new(vault, &page, &token)),
        };
        seed(db, m, &shop).await?;
        made.push((m, page));
    }
    Ok(made)
}
