//! `worker keys status` and `worker keys rotate`.
//!
//! Tokens live in each merchant's rows under RLS, so both commands list merchants through the
//! id-only resolver and then work merchant by merchant, one transaction each: a rotation that
//! stops half-way keeps what it finished, and running it again does only the rest.

use std::collections::BTreeMap;

use anyhow::bail;
use diesel_async::AsyncPgConnection;
use igsales_config::{DbSettings, KeyRing};
use igsales_schema::accounts::{self, AccountError, RotateCounts};
use igsales_schema::{Db, DbError, Vault};

/// Stored tokens per key version (`None`: not in the `v{kver}:` form).
type Census = BTreeMap<Option<u32>, usize>;

async fn census(db: &Db) -> anyhow::Result<Census> {
    let mut totals = Census::new();
    for merchant in db.merchant_ids().await? {
        let versions = db
            .as_merchant(merchant, async |c: &AsyncPgConnection| {
                Ok::<_, DbError>(accounts::token_versions(c).await?)
            })
            .await?;
        for (version, n) in versions {
            *totals.entry(version).or_default() += n;
        }
    }
    Ok(totals)
}

fn print_census(vault: &Vault, census: &Census) {
    let current = vault.current_version();
    let ring = vault.versions();
    let mut versions: Vec<Option<u32>> = ring.iter().copied().map(Some).collect();
    let others: Vec<Option<u32>> = census
        .keys()
        .filter(|v| !versions.contains(v))
        .copied()
        .collect();
    versions.extend(others);
    println!("{:<12} {:>8}  role", "key version", "tokens");
    for version in versions {
        let n = census.get(&version).copied().unwrap_or(0);
        let (label, role) = match version {
            Some(v) if v == current => (format!("v{v}"), "encrypts new tokens (current)"),
            Some(v) if ring.contains(&v) => (format!("v{v}"), "decrypts only"),
            Some(v) => (
                format!("v{v}"),
                "NOT IN ENCRYPTION_KEY: cannot be decrypted",
            ),
            None => ("malformed".to_owned(), "not a v{kver}: ciphertext"),
        };
        println!("{label:<12} {n:>8}  {role}");
    }
    let total: usize = census.values().sum();
    let behind = total - census.get(&Some(current)).copied().unwrap_or(0);
    if behind == 0 {
        println!("all {total} stored tokens are under the current key v{current}");
    } else {
        println!(
            "{behind} of {total} stored tokens are not under the current key v{current}: run `worker keys rotate`"
        );
    }
}

pub async fn status(settings: &DbSettings, ring: &KeyRing) -> anyhow::Result<()> {
    let db = Db::connect(settings).await?;
    let vault = Vault::new(ring);
    print_census(&vault, &census(&db).await?);
    Ok(())
}

pub async fn rotate(settings: &DbSettings, ring: &KeyRing) -> anyhow::Result<()> {
    let db = Db::connect(settings).await?;
    let vault = Vault::new(ring);
    let current = vault.current_version();
    let merchants = db.merchant_ids().await?;
    let mut total = RotateCounts::default();
    let mut failures = Vec::new();
    for (i, merchant) in merchants.iter().copied().enumerate() {
        let vault = &vault;
        let counts = db
            .as_merchant(merchant, async move |c: &AsyncPgConnection| {
                accounts::rotate_tokens(c, vault, merchant).await
            })
            .await
            .map_err(|e: AccountError| anyhow::anyhow!("merchant {merchant}: {e}"))?;
        eprintln!(
            "[{}/{}] merchant {merchant}: {} rotated, {} already under v{current}, {} failed",
            i + 1,
            merchants.len(),
            counts.rotated,
            counts.already_current,
            counts.failed.len()
        );
        total.rotated += counts.rotated;
        total.already_current += counts.already_current;
        failures.extend(
            counts
                .failed
                .into_iter()
                .map(|(account, e)| format!("merchant {merchant} account {account}: {e}")),
        );
    }
    println!(
        "rotated {} token(s) to v{current}; {} already under v{current}; {} failed; {} merchant(s)",
        total.rotated,
        total.already_current,
        failures.len(),
        merchants.len()
    );
    print_census(&vault, &census(&db).await?);
    if !failures.is_empty() {
        bail!(
            "{} token(s) could not be re-encrypted:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}
