//! Catalog search against stored rows, as the app role (RLS applies): typos, missing accents,
//! plurals, tags, name over description, "no match", and only the merchant's own products.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use igsales_schema::merchants::{self, Language, MerchantChanges};
use igsales_schema::products::{self, Product, SearchOutcome, SearchQuery};
use igsales_schema::{Db, DbError, MerchantId};
use igsales_tests::TestDb;
use igsales_tests::shops::{self, Shop};

fn product(sku: &str, name: &str, description: &str, tags: &str) -> Product {
    Product {
        sku: sku.into(),
        name: name.into(),
        description: description.into(),
        tags: tags.into(),
        price: "10.00".parse().expect("decimal"),
        currency: Some("BRL".into()),
        stock: Some(1),
        url: None,
        image_url: None,
    }
}

fn shop_catalog() -> Vec<Product> {
    vec![
        product(
            "TEE-B",
            "Camiseta Básica Preta M",
            "Malha de algodão.",
            "roupa",
        ),
        product(
            "TEE-W",
            "Camiseta Básica Branca M",
            "Malha de algodão.",
            "roupa",
        ),
        product(
            "MUG-1",
            "Caneca Cerâmica Azul",
            "Vai ao micro-ondas.",
            "cozinha",
        ),
        product("JKT-1", "Jaqueta Jeans", "Modelagem ampla.", "casaco"),
        product("PNT-1", "Calça Reta Azul", "Tecido jeans lavado.", "roupa"),
        product("CDL-1", "Vela Aromática", "Cera vegetal.", "presente, casa"),
    ]
}

async fn search(db: &Db, m: MerchantId, text: &str) -> Vec<String> {
    let query = SearchQuery {
        text: text.into(),
        limit: 8,
        embedding: None,
    };
    let outcome = db
        .as_merchant(m, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(products::search(c, &query).await?)
        })
        .await
        .expect("search");
    match outcome {
        SearchOutcome::Found(hits) => {
            assert!(
                hits.windows(2).all(|w| w[0].score >= w[1].score),
                "best first: {hits:?}"
            );
            assert!(hits.iter().all(|h| h.score > 0.0 && h.score <= 1.0));
            hits.into_iter().map(|h| h.product.sku).collect()
        }
        SearchOutcome::NoMatch => Vec::new(),
    }
}

async fn seeded() -> (TestDb, Db, MerchantId, MerchantId) {
    let test_db = TestDb::migrated().await;
    let db = test_db.app_db(2).await;
    let (shop, other) = (MerchantId::new_random(), MerchantId::new_random());
    let mine = shop_catalog();
    let theirs = vec![
        product("PHN-1", "Celular Smartphone", "Capinha inclusa.", ""),
        product("TEE-9", "Camiseta Preta", "", ""),
    ];
    for (m, rows) in [(shop, &mine), (other, &theirs)] {
        let seed = Shop {
            products: rows,
            ..Shop::named("Shop")
        };
        shops::seed(&db, m, &seed).await.expect("seed catalog");
    }
    (test_db, db, shop, other)
}

#[tokio::test(flavor = "multi_thread")]
async fn search_forgives_typos_accents_and_plurals_and_ranks_the_matching_variant_first() {
    let (_test_db, db, shop, _) = seeded().await;
    // A typo two edits away, next to a word as written; the colour picks the variant.
    assert_eq!(search(&db, shop, "camisteta preta").await[0], "TEE-B");
    assert_eq!(
        search(&db, shop, "vcs tem camiseta branca?").await[0],
        "TEE-W"
    );
    // Missing accent and a plural.
    assert_eq!(search(&db, shop, "caneca ceramica").await, ["MUG-1"]);
    assert_eq!(search(&db, shop, "canecas").await, ["MUG-1"]);
    // A tag the merchant added.
    assert_eq!(search(&db, shop, "um presente").await, ["CDL-1"]);
    // "jeans" in a name outranks "jeans" in a description.
    assert_eq!(search(&db, shop, "jeans").await, ["JKT-1", "PNT-1"]);
    // One edit away is enough on its own.
    assert_eq!(search(&db, shop, "jaquetta").await, ["JKT-1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn search_says_no_match_for_what_the_shop_does_not_sell() {
    let (_test_db, db, shop, other) = seeded().await;
    // The other merchant sells phones; this one does not, and never sees theirs.
    assert!(search(&db, shop, "vocês vendem celular?").await.is_empty());
    assert!(search(&db, shop, "oi, tudo bem?").await.is_empty());
    // A typo too far from anything ("capinha" is two edits from nothing here) alone.
    assert!(search(&db, shop, "tem capinha?").await.is_empty());
    // The other merchant finds its own, and only its own.
    assert_eq!(search(&db, other, "celular").await, ["PHN-1"]);
    assert_eq!(search(&db, other, "camiseta preta").await, ["TEE-9"]);
    assert_eq!(search(&db, shop, "camiseta preta").await[0], "TEE-B");
    assert!(
        !search(&db, shop, "camiseta preta")
            .await
            .contains(&"TEE-9".to_owned())
    );
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn the_search_function_sees_nothing_without_a_merchant_context() {
    let (test_db, _db, _, _) = seeded().await;
    // As the app's login role, straight at the function: no context, no products, even
    // though it runs with the rights of a role that may read every tenant's.
    let mut app = test_db.app_conn().await;
    let none: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM search_products('{camiseta}', 'pt-BR', 8, 0.0, NULL)",
    )
    .get_result(&mut app)
    .await
    .expect("call search_products");
    assert_eq!(none.n, 0);
    // With an unknown merchant's context: nothing either.
    app.batch_execute(
        "BEGIN; SELECT set_merchant_context(gen_random_uuid());
         CREATE TEMP TABLE n AS SELECT count(*) AS n
           FROM search_products('{camiseta}', 'pt-BR', 8, 0.0, NULL);",
    )
    .await
    .expect("call in a context");
    let n: Count = diesel::sql_query("SELECT n FROM n")
        .get_result(&mut app)
        .await
        .expect("read");
    assert_eq!(n.n, 0);
    app.batch_execute("ROLLBACK").await.expect("rollback");
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    tags: String,
    #[diesel(sql_type = Text)]
    search_language: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_stored_and_products_follow_their_merchants_language() {
    let (test_db, db, shop, _) = seeded().await;
    let listed = db
        .as_merchant(shop, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(products::list(c).await?)
        })
        .await
        .expect("list");
    let candle = listed.iter().find(|p| p.sku == "CDL-1").expect("candle");
    assert_eq!(candle.tags, "presente, casa");

    // An English shop: "running" stems to "run" once the merchant's language says English.
    let english = MerchantId::new_random();
    let seed = Shop {
        products: &[product("RUN-E", "Trail Run Shoes", "Light.", "sport")],
        ..Shop::named("English shop")
    };
    shops::seed(&db, english, &seed).await.expect("seed");
    assert!(
        search(&db, english, "running").await.is_empty(),
        "stemmed as pt-BR"
    );
    db.as_merchant(english, async |c: &AsyncPgConnection| {
        let changes = MerchantChanges {
            language: Some(Language::En),
            ..MerchantChanges::default()
        };
        Ok::<_, DbError>(merchants::update(c, english, &changes).await?)
    })
    .await
    .expect("set language");
    assert_eq!(search(&db, english, "running").await, ["RUN-E"]);
    let mut su = test_db.superuser_conn().await;
    let row: Stored =
        diesel::sql_query("SELECT tags, search_language FROM products WHERE sku = 'RUN-E'")
            .get_result(&mut su)
            .await
            .expect("stored row");
    assert_eq!(
        (row.tags.as_str(), row.search_language.as_str()),
        ("sport", "en")
    );
}

#[derive(QueryableByName)]
struct Embedded {
    #[diesel(sql_type = Text)]
    sku: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::Float4>>)]
    embedding: Option<Vec<f32>>,
}

async fn embeddings(test_db: &TestDb) -> Vec<Embedded> {
    let mut su = test_db.superuser_conn().await;
    diesel::sql_query("SELECT sku, embedding FROM products ORDER BY sku")
        .load(&mut su)
        .await
        .expect("stored embeddings")
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_embed_stores_the_fake_models_vectors_and_redoes_only_changed_products() {
    use igsales_tests::fake_llm::{FakeLlm, FakeLlmConfig, embeddings::embed};
    let (test_db, db, shop, _) = seeded().await;
    let llm = FakeLlm::start(FakeLlmConfig::default()).await;
    let worker = igsales_tests::stack::bin_dir().join("worker");
    let embed_cli = || {
        igsales_tests::cli::run(
            worker.to_str().expect("utf-8 path"),
            &["catalog", "embed", "--merchant", &shop.to_string()],
            &[
                ("DATABASE_URL", test_db.app_url()),
                ("OPENAI_API_KEY", FakeLlmConfig::default().api_key),
                ("OPENAI_BASE_URL", llm.base_url()),
                ("OPENAI_EMBEDDING_MODEL", "fake-embedding".to_owned()),
            ],
        )
    };
    let out = embed_cli();
    out.assert_code(0);
    assert!(out.stdout.contains("embedded 6 products"), "{}", out.stdout);
    // The merchant's products hold the fake model's vector of their text; the other
    // merchant's stay unembedded.
    let stored = embeddings(&test_db).await;
    let mug = stored.iter().find(|e| e.sku == "MUG-1").expect("mug");
    let expected = embed(&products::embedding_text(
        "Caneca Cerâmica Azul",
        "cozinha",
        "Vai ao micro-ondas.",
    ));
    let got = mug.embedding.as_ref().expect("mug embedded");
    assert_eq!(got.len(), expected.len());
    assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6));
    assert!(
        stored
            .iter()
            .filter(|e| e.sku == "PHN-1")
            .all(|e| e.embedding.is_none())
    );

    // Nothing changed: nothing to embed. A changed text: just that product.
    embed_cli().assert_code(0);
    assert!(embed_cli().stdout.contains("embedded 0 products"));
    let renamed = vec![product(
        "MUG-1",
        "Caneca Grande",
        "Vai ao micro-ondas.",
        "cozinha",
    )];
    db.as_merchant(shop, async |c: &AsyncPgConnection| {
        Ok::<_, DbError>(products::upsert(c, shop, &renamed, |_| {}).await?)
    })
    .await
    .expect("rename");
    let out = embed_cli();
    assert!(out.stdout.contains("embedded 1 products"), "{}", out.stdout);

    // A query embedding blends in: the mug's own text as the query finds it first.
    let query = SearchQuery {
        text: "caneca grande".into(),
        limit: 3,
        embedding: Some(embed(&products::embedding_text(
            "Caneca Grande",
            "cozinha",
            "Vai ao micro-ondas.",
        ))),
    };
    let outcome = db
        .as_merchant(shop, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(products::search(c, &query).await?)
        })
        .await
        .expect("search");
    let SearchOutcome::Found(hits) = outcome else {
        panic!("no match")
    };
    assert_eq!(hits[0].product.sku, "MUG-1");
    assert!(hits[0].score > 0.9, "{hits:?}");
}
