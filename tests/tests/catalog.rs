//! Catalog search against stored rows: folded words match folded product text, name and SKU
//! before description, and nothing in a word acts as a wildcard.

use diesel_async::AsyncPgConnection;
use igsales_schema::products::{self, Product};
use igsales_schema::{DbError, MerchantId};
use igsales_tests::TestDb;
use igsales_tests::shops::{self, Shop};

fn product(sku: &str, name: &str, description: &str) -> Product {
    Product {
        sku: sku.into(),
        name: name.into(),
        description: description.into(),
        price: "10.00".parse().expect("decimal"),
        currency: Some("BRL".into()),
        stock: Some(1),
        url: None,
        image_url: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn folded_words_find_the_products_that_mention_them_best_first() {
    let test_db = TestDb::migrated().await;
    let db = test_db.app_db(2).await;
    let (shop, other) = (MerchantId::new_random(), MerchantId::new_random());
    let mut catalog: Vec<Product> = (0..30)
        .map(|n| product(&format!("P-{n:02}"), &format!("Product {n}"), "plain"))
        .collect();
    catalog.push(product("TEE-01", "Camiseta Básica", "100% algodão"));
    catalog.push(product("BAG-01", "Bolsa", "Combina com a camiseta básica"));
    catalog.push(product("PCT-01", "Desconto 50%", "cupom"));
    for (m, rows) in [
        (shop, catalog),
        (other, vec![product("TEE-99", "Camiseta", "")]),
    ] {
        let shop = Shop {
            products: &rows,
            ..Shop::named("Shop")
        };
        shops::seed(&db, m, &shop).await.expect("seed catalog");
    }
    let search = async |words: &[&str], limit: i64| -> Vec<String> {
        let words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        db.as_merchant(shop, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(products::search(c, &words, limit).await?)
        })
        .await
        .expect("search")
        .into_iter()
        .map(|p| p.sku)
        .collect()
    };

    // Accents folded on both sides; the name match (2) outranks the description match (1),
    // and another merchant's camiseta is invisible.
    assert_eq!(
        search(&["camiseta", "basica"], 8).await,
        ["TEE-01", "BAG-01"]
    );
    assert_eq!(search(&["algodao"], 8).await, ["TEE-01"]);
    // SKUs count as names.
    assert_eq!(search(&["bag-01"], 8).await, ["BAG-01"]);
    // `%` and `_` are plain characters, not wildcards.
    assert_eq!(search(&["50%"], 8).await, ["PCT-01"]);
    assert!(search(&["_"], 8).await.is_empty());
    // Ties by SKU; the limit holds.
    assert_eq!(search(&["product"], 3).await, ["P-00", "P-01", "P-02"]);
    assert!(search(&["nothing-like-it"], 8).await.is_empty());
}
