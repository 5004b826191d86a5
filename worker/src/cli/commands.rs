//! Operators' commands that are one short conversation with Postgres.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use diesel_async::AsyncPgConnection;
use igsales_config::{DbSettings, PgUrl};
use igsales_schema::merchants::{self, MerchantChanges};
use igsales_schema::{
    Db, DbError, MerchantId, PgConnector, StartupError, migrate as migrations, products,
};

use crate::cli::catalog;

/// A connect failure's reason, without the "Postgres connection failed" its `Display` adds
/// (the start-up error says that already).
fn reason(e: DbError) -> String {
    match e {
        DbError::Connect(reason) => reason,
        other => other.to_string(),
    }
}

pub async fn migrate(
    url: &PgUrl,
    var: &'static str,
    connect_timeout: Duration,
) -> anyhow::Result<()> {
    let unreachable = |reason: String| StartupError::Unreachable {
        var,
        location: url.location(),
        reason,
    };
    // The same TLS-aware connect as the app's pool: sslmode/sslrootcert count here too.
    let conn = PgConnector::new(url)
        .map_err(reason)
        .map_err(unreachable)?
        .connect(connect_timeout)
        .await
        .map_err(reason)
        .map_err(unreachable)?;
    // The harness blocks in place: fine on this multi-threaded runtime.
    let applied = migrations::run_pending(conn)?;
    if applied.is_empty() {
        println!("database schema is up to date; nothing to apply");
    } else {
        println!(
            "applied {} migration(s): {}",
            applied.len(),
            applied.join(", ")
        );
    }
    Ok(())
}

pub async fn merchant_create(
    settings: &DbSettings,
    name: &str,
    persona: Option<&str>,
) -> anyhow::Result<()> {
    let db = Db::connect(settings).await?;
    let id = MerchantId::new_random();
    let (name, persona) = (name.to_owned(), persona.map(str::to_owned));
    db.as_merchant(id, async move |c: &AsyncPgConnection| {
        merchants::create(c, id, &name, persona.as_deref()).await?;
        Ok::<_, DbError>(())
    })
    .await
    .context("creating the merchant")?;
    // Only the id on stdout, so scripts can capture it.
    println!("{id}");
    Ok(())
}

pub async fn merchant_set(
    settings: &DbSettings,
    merchant: MerchantId,
    changes: &MerchantChanges,
) -> anyhow::Result<()> {
    let db = Db::connect(settings).await?;
    let owned = changes.clone();
    let found = db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            Ok::<_, DbError>(merchants::update(c, merchant, &owned).await?)
        })
        .await
        .context("updating the merchant")?;
    if !found {
        bail!("merchant {merchant} not found");
    }
    let mut what = Vec::new();
    if changes.persona.is_some() {
        what.push("persona".to_owned());
    }
    if let Some(on) = changes.ai_enabled {
        what.push(format!("ai={}", if on { "on" } else { "off" }));
    }
    if changes.handoff_message.is_some() {
        what.push("handoff message".to_owned());
    }
    println!("merchant {merchant} updated: {}", what.join(", "));
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum ImportError {
    #[error("merchant {0} not found")]
    UnknownMerchant(MerchantId),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for ImportError {
    fn from(e: diesel::result::Error) -> Self {
        ImportError::Db(e.into())
    }
}

pub async fn catalog_import(
    settings: &DbSettings,
    merchant: MerchantId,
    file: &Path,
) -> anyhow::Result<()> {
    // Validate the whole file before touching the database: a bad row imports nothing.
    let rows = catalog::read_file(file)?;
    let total = rows.len();
    eprintln!("validated {total} products from {}", file.display());
    let db = Db::connect(settings).await?;
    let counts = db
        .as_merchant(merchant, async move |c: &AsyncPgConnection| {
            if merchants::find(c, merchant).await?.is_none() {
                return Err(ImportError::UnknownMerchant(merchant));
            }
            let counts = products::upsert(c, merchant, &rows, |done| {
                eprint!("\rimporting: {done}/{total}");
                let _ = std::io::stderr().flush();
            })
            .await?;
            eprintln!();
            Ok(counts)
        })
        .await?;
    println!(
        "imported {total} products for merchant {merchant}: {} new, {} updated",
        counts.inserted, counts.updated
    );
    Ok(())
}
