//! Connected Instagram accounts and their encrypted tokens. Every function runs inside
//! [`crate::Db::as_merchant`].

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use igsales_config::Secret;

use crate::db::{DbError, MerchantId};
use crate::schema::instagram_accounts as ia;
use crate::vault::{TokenRow, Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("this Instagram account is connected to another merchant")]
    AlreadyConnected,
    #[error("no such connected Instagram account")]
    NotFound,
    #[error("the Instagram account needs its owner to authorise it again")]
    NeedsReauth,
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<DieselError> for AccountError {
    fn from(e: DieselError) -> Self {
        AccountError::Db(DbError::Query(e))
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ia)]
pub struct Account {
    pub instagram_page_id: String,
    pub username: String,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub token_refreshed_at: Option<DateTime<Utc>>,
    pub needs_reauth: bool,
    /// When its webhooks were last subscribed (`None`: stored, but not receiving events yet).
    pub subscribed_at: Option<DateTime<Utc>>,
}

/// What the OAuth flow learned about an account.
#[derive(Debug, Clone)]
pub struct Connection<'a> {
    /// The professional account id (`/me` `user_id`, webhook `entry.id`).
    pub instagram_page_id: &'a str,
    /// The app-scoped id (`/me` `id`), which Meta's callbacks may use.
    pub instagram_user_id: Option<&'a str>,
    pub username: &'a str,
    pub token: &'a Secret,
    pub expires_at: DateTime<Utc>,
}

/// Stores (or renews) a connected account with its token encrypted for this row. An account
/// that belongs to another merchant is refused, never re-pointed. It is stored before its
/// webhooks are subscribed (so the first events find it): [`mark_subscribed`] follows.
pub async fn connect(
    mut conn: &AsyncPgConnection,
    vault: &Vault,
    merchant: MerchantId,
    account: &Connection<'_>,
) -> Result<(), AccountError> {
    let Connection {
        instagram_page_id,
        instagram_user_id,
        username,
        token,
        expires_at,
    } = *account;
    let row = TokenRow {
        merchant,
        instagram_page_id,
    };
    let ciphertext = vault.encrypt(row, token.expose())?;
    let now = Utc::now();
    let result = diesel::insert_into(ia::table)
        .values((
            ia::merchant_id.eq(merchant.0),
            ia::instagram_page_id.eq(instagram_page_id),
            ia::username.eq(username),
            ia::instagram_user_id.eq(instagram_user_id),
            ia::token_ciphertext.eq(&ciphertext),
            ia::token_expires_at.eq(expires_at),
            ia::token_refreshed_at.eq(now),
            ia::connected_at.eq(now),
            ia::subscribed_at.eq(None::<DateTime<Utc>>),
        ))
        .on_conflict((ia::merchant_id, ia::instagram_page_id))
        .do_update()
        .set((
            ia::username.eq(username),
            ia::instagram_user_id.eq(instagram_user_id),
            ia::subscribed_at.eq(None::<DateTime<Utc>>),
            ia::token_ciphertext.eq(&ciphertext),
            ia::token_expires_at.eq(expires_at),
            ia::token_refreshed_at.eq(now),
            ia::needs_reauth.eq(false),
            ia::updated_at.eq(now),
        ))
        .execute(&mut conn)
        .await;
    match result {
        Ok(_) => Ok(()),
        // The only other unique key is `instagram_page_id`: another merchant holds it.
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
            Err(AccountError::AlreadyConnected)
        }
        Err(e) => Err(e.into()),
    }
}

/// Meta confirmed the account's webhook subscription.
pub async fn mark_subscribed(
    mut conn: &AsyncPgConnection,
    instagram_page_id: &str,
) -> QueryResult<bool> {
    let n = diesel::update(ia::table.filter(ia::instagram_page_id.eq(instagram_page_id)))
        .set((
            ia::subscribed_at.eq(diesel::dsl::now),
            ia::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await?;
    Ok(n > 0)
}

pub async fn list(mut conn: &AsyncPgConnection) -> QueryResult<Vec<Account>> {
    ia::table
        .select(Account::as_select())
        .order(ia::instagram_page_id)
        .load(&mut conn)
        .await
}

/// Forgets the account's token and marks it for re-authorisation (Meta deauthorized the app,
/// or an operator disconnected it). `false` when there is no such account.
pub async fn disconnect(
    mut conn: &AsyncPgConnection,
    instagram_page_id: &str,
) -> QueryResult<bool> {
    let n = diesel::update(ia::table.filter(ia::instagram_page_id.eq(instagram_page_id)))
        .set((
            ia::token_ciphertext.eq(None::<String>),
            ia::token_expires_at.eq(None::<DateTime<Utc>>),
            ia::needs_reauth.eq(true),
            ia::subscribed_at.eq(None::<DateTime<Utc>>),
            ia::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await?;
    Ok(n > 0)
}

/// The decrypted token of one account.
pub async fn token(
    mut conn: &AsyncPgConnection,
    vault: &Vault,
    merchant: MerchantId,
    instagram_page_id: &str,
) -> Result<Secret, AccountError> {
    let stored: Option<Option<String>> = ia::table
        .filter(ia::instagram_page_id.eq(instagram_page_id))
        .select(ia::token_ciphertext)
        .first(&mut conn)
        .await
        .optional()?;
    let stored = stored.flatten().ok_or(AccountError::NotFound)?;
    let row = TokenRow {
        merchant,
        instagram_page_id,
    };
    Ok(vault.decrypt(row, &stored)?)
}

/// The decrypted token of one account that may still call Graph: an account flagged
/// `needs_reauth` (Meta rejected its token with 190) is refused, so nothing calls with it.
pub async fn usable_token(
    mut conn: &AsyncPgConnection,
    vault: &Vault,
    merchant: MerchantId,
    instagram_page_id: &str,
) -> Result<Secret, AccountError> {
    let stored: Option<(Option<String>, bool)> = ia::table
        .filter(ia::instagram_page_id.eq(instagram_page_id))
        .select((ia::token_ciphertext, ia::needs_reauth))
        .first(&mut conn)
        .await
        .optional()?;
    let (stored, needs_reauth) = stored.ok_or(AccountError::NotFound)?;
    if needs_reauth {
        return Err(AccountError::NeedsReauth);
    }
    let stored = stored.ok_or(AccountError::NotFound)?;
    let row = TokenRow {
        merchant,
        instagram_page_id,
    };
    Ok(vault.decrypt(row, &stored)?)
}

/// Whether the account waits for its owner to authorise it again (`None`: not connected).
pub async fn needs_reauth(
    mut conn: &AsyncPgConnection,
    instagram_page_id: &str,
) -> QueryResult<Option<bool>> {
    ia::table
        .filter(ia::instagram_page_id.eq(instagram_page_id))
        .select(ia::needs_reauth)
        .first(&mut conn)
        .await
        .optional()
}

/// Stored tokens of this merchant per key version (`None`: not in the `v{kver}:` form).
pub async fn token_versions(
    mut conn: &AsyncPgConnection,
) -> QueryResult<Vec<(Option<u32>, usize)>> {
    let stored: Vec<Option<String>> = ia::table
        .select(ia::token_ciphertext)
        .filter(ia::token_ciphertext.is_not_null())
        .load(&mut conn)
        .await?;
    let mut counts: Vec<(Option<u32>, usize)> = Vec::new();
    for version in stored.iter().flatten().map(|s| Vault::version_of(s)) {
        match counts.iter_mut().find(|(v, _)| *v == version) {
            Some((_, n)) => *n += 1,
            None => counts.push((version, 1)),
        }
    }
    Ok(counts)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotateCounts {
    pub rotated: usize,
    pub already_current: usize,
    /// Accounts whose token could not be decrypted (key not in the ring, or tampered).
    pub failed: Vec<(String, VaultError)>,
}

/// Re-encrypts this merchant's tokens that are not under the vault's current key. Each row is
/// swapped only if it still holds the ciphertext that was read, so a concurrent token refresh
/// (which writes under the current key anyway) wins. A token that fails to decrypt is
/// reported, not fatal, so one bad row does not stop the rest.
pub async fn rotate_tokens(
    mut conn: &AsyncPgConnection,
    vault: &Vault,
    merchant: MerchantId,
) -> Result<RotateCounts, AccountError> {
    let rows: Vec<(String, Option<String>)> = ia::table
        .select((ia::instagram_page_id, ia::token_ciphertext))
        .filter(ia::token_ciphertext.is_not_null())
        .load(&mut conn)
        .await?;
    let mut counts = RotateCounts::default();
    for (page_id, stored) in rows {
        let Some(stored) = stored else { continue };
        let row = TokenRow {
            merchant,
            instagram_page_id: &page_id,
        };
        match vault.reencrypt(row, &stored) {
            Err(e) => counts.failed.push((page_id.clone(), e)),
            Ok(None) => counts.already_current += 1,
            Ok(Some(fresh)) => {
                let n = diesel::update(
                    ia::table
                        .filter(ia::instagram_page_id.eq(&page_id))
                        .filter(ia::token_ciphertext.eq(&stored)),
                )
                .set((
                    ia::token_ciphertext.eq(&fresh),
                    ia::updated_at.eq(diesel::dsl::now),
                ))
                .execute(&mut conn)
                .await?;
                counts.rotated += n;
            }
        }
    }
    Ok(counts)
}

/// Stores a refreshed token (encrypted for its row) and its new expiry. `false` when the
/// account was disconnected meanwhile (its token is then not brought back).
pub async fn store_refreshed(
    mut conn: &AsyncPgConnection,
    vault: &Vault,
    merchant: MerchantId,
    instagram_page_id: &str,
    token: &Secret,
    expires_at: DateTime<Utc>,
) -> Result<bool, AccountError> {
    let ciphertext = vault.encrypt(
        TokenRow {
            merchant,
            instagram_page_id,
        },
        token.expose(),
    )?;
    let now = Utc::now();
    let n = diesel::update(
        ia::table
            .filter(ia::instagram_page_id.eq(instagram_page_id))
            .filter(ia::token_ciphertext.is_not_null()),
    )
    .set((
        ia::token_ciphertext.eq(&ciphertext),
        ia::token_expires_at.eq(expires_at),
        ia::token_refreshed_at.eq(now),
        ia::needs_reauth.eq(false),
        ia::updated_at.eq(now),
    ))
    .execute(&mut conn)
    .await?;
    Ok(n > 0)
}

/// Marks the account as needing a new authorisation (its token was rejected with 190).
pub async fn mark_needs_reauth(
    mut conn: &AsyncPgConnection,
    instagram_page_id: &str,
) -> QueryResult<()> {
    diesel::update(ia::table.filter(ia::instagram_page_id.eq(instagram_page_id)))
        .set((
            ia::needs_reauth.eq(true),
            ia::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await
        .map(|_| ())
}
