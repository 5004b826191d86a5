//! Merchants with a catalog and a connected Instagram account whose token the fake Meta issued,
//! written straight through the schema library (the benchmarks and the chaos run need many).

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use igsales_config::Secret;
use igsales_schema::accounts::{self, Connection};
use igsales_schema::products::Product;
use igsales_schema::{Db, DbError, MerchantId, Vault, merchants, products};

use crate::fake_meta::{FakeAccount, FakeMeta};

/// `n` shops, each with `catalog` products; returns each merchant with its account (page) id.
/// Page ids start with `prefix` and are unique per call.
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
        let m = MerchantId::new_random();
        db.as_merchant(m, async |c: &AsyncPgConnection| {
            merchants::create(c, m, &format!("Shop {i}"), None)
                .await
                .map_err(DbError::from)?;
            let products: Vec<Product> = (0..catalog)
                .map(|n| Product {
                    sku: format!("SKU-{n}"),
                    name: format!("Product {n}"),
                    description: "cotton".into(),
                    price: "19.90".parse().expect("decimal"),
                    currency: Some("BRL".into()),
                    stock: Some(n as i32),
                    url: None,
                    image_url: None,
                })
                .collect();
            products::upsert(c, m, &products, |_| {})
                .await
                .map_err(DbError::from)?;
            accounts::connect(
                c,
                vault,
                m,
                &Connection {
                    instagram_page_id: &page,
                    instagram_user_id: None,
                    username: "shop",
                    token: &Secret::new(token),
                    expires_at: Utc::now() + chrono::Duration::days(50),
                },
            )
            .await
            .map_err(|e| DbError::Connect(e.to_string()))
        })
        .await?;
        made.push((m, page));
    }
    Ok(made)
}
