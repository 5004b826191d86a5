//! The token vault against stored rows: a ciphertext is bound to its merchant and row.

use chrono::Utc;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use igsales_config::{KeyEntry, KeyRing, Secret};
use igsales_schema::accounts::{self, AccountError};
use igsales_schema::{MerchantId, Vault, VaultError};
use igsales_tests::TestDb;
use igsales_tests::shops::{self, Account, Shop};

fn vault() -> Vault {
    Vault::new(&KeyRing(vec![KeyEntry {
        version: 4,
        key: [4; 32],
    }]))
}

async fn merchant_with_account(
    db: &igsales_schema::Db,
    vault: &Vault,
    page: &str,
    token: &str,
) -> MerchantId {
    let m = MerchantId::new_random();
    let account = Account::new(vault, page, token).expires_in_days(60);
    shops::seed(db, m, &Shop::named("Shop").with_account(account))
        .await
        .expect("seed account");
    m
}

async fn read_token(
    db: &igsales_schema::Db,
    vault: &Vault,
    m: MerchantId,
    page: &str,
) -> Result<Secret, AccountError> {
    let page = page.to_owned();
    db.as_merchant(m, async move |c: &AsyncPgConnection| {
        accounts::token(c, vault, m, &page).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_round_trip_encrypted_and_a_ciphertext_moved_to_another_merchant_fails() {
    let test_db = TestDb::migrated().await;
    let db = test_db.app_db(2).await;
    let vault = vault();
    let a = merchant_with_account(&db, &vault, "17841400000000011", "IGAA-secret-of-a").await;
    let b = merchant_with_account(&db, &vault, "17841400000000022", "IGAA-secret-of-b").await;

    assert_eq!(
        read_token(&db, &vault, a, "17841400000000011")
            .await
            .expect("a")
            .expose(),
        "IGAA-secret-of-a"
    );

    // What is stored is a v4 ciphertext, never the token.
    let mut su = test_db.superuser_conn().await;
    #[derive(diesel::QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Text)]
        token_ciphertext: String,
    }
    let stored: Vec<Stored> = diesel::sql_query("SELECT token_ciphertext FROM instagram_accounts")
        .load(&mut su)
        .await
        .expect("stored");
    assert_eq!(stored.len(), 2);
    for s in &stored {
        assert!(s.token_ciphertext.starts_with("v4:"));
        assert!(!s.token_ciphertext.contains("IGAA"));
    }

    // Someone with database access copies A's ciphertext into B's row.
    diesel::sql_query(
        "UPDATE instagram_accounts SET token_ciphertext =
           (SELECT token_ciphertext FROM instagram_accounts WHERE instagram_page_id = '17841400000000011')
         WHERE instagram_page_id = '17841400000000022'",
    )
    .execute(&mut su)
    .await
    .expect("copy ciphertext");
    match read_token(&db, &vault, b, "17841400000000022").await {
        Err(AccountError::Vault(VaultError::Decrypt)) => {}
        other => panic!("a moved ciphertext must not decrypt: {other:?}"),
    }

    // Tampering with a stored ciphertext fails too; there is no plaintext fallback.
    diesel::sql_query(
        "UPDATE instagram_accounts SET token_ciphertext = 'v4:' || 'IGAA-secret-of-a'
         WHERE instagram_page_id = '17841400000000011'",
    )
    .execute(&mut su)
    .await
    .expect("tamper");
    assert!(
        read_token(&db, &vault, a, "17841400000000011")
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_connected_to_one_merchant_cannot_be_claimed_by_another() {
    let test_db = TestDb::migrated().await;
    let db = test_db.app_db(2).await;
    let vault = vault();
    let a = merchant_with_account(&db, &vault, "17841400000000033", "t1").await;
    let b = MerchantId::new_random();
    let account = Account {
        username: "x",
        expires_at: Utc::now(),
        ..Account::new(&vault, "17841400000000033", "t2")
    };
    let result = shops::seed(&db, b, &Shop::named("Other").with_account(account)).await;
    assert!(
        matches!(result, Err(AccountError::AlreadyConnected)),
        "{result:?}"
    );
    // Still A's, with A's token.
    assert_eq!(
        read_token(&db, &vault, a, "17841400000000033")
            .await
            .expect("a")
            .expose(),
        "t1"
    );
    assert_eq!(
        db.merchant_for_instagram_account("17841400000000033")
            .await
            .expect("resolve"),
        Some(a)
    );
    assert_eq!(
        db.merchant_for_instagram_account("999")
            .await
            .expect("resolve"),
        None
    );
}
