//! Operators' commands that are one short conversation with Postgres.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use diesel_async::AsyncPgConnection;
use igsales_config::{DbSettings, PgUrl};
use igsales_schema::comments::{self, CommentRule, LinkKind};
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
    app_login: Option<&PgUrl>,
) -> anyhow::Result<()> {
    // The same TLS-aware connect as the app's pool: sslmode/sslrootcert count here too.
    let connect = async || -> Result<AsyncPgConnection, StartupError> {
        let unreachable = |reason: String| StartupError::Unreachable {
            var,
            location: url.location(),
            reason,
        };
        PgConnector::new(url)
            .map_err(reason)
            .map_err(unreachable)?
            .connect(connect_timeout)
            .await
            .map_err(reason)
            .map_err(unreachable)
    };
    let conn = connect().await?;
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
    if let Some((login, password)) = app_login.and_then(PgUrl::credentials)
        && login != url.user()
    {
        // The harness took the first connection; the role is set up on a second one.
        ensure_app_login(connect().await?, &login, &password).await?;
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct LoginRole {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    exists: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    member: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    may_manage: bool,
}

#[derive(diesel::QueryableByName)]
struct Statement {
    #[diesel(sql_type = diesel::sql_types::Text)]
    sql: String,
}

/// Keeps the app's login role (`DATABASE_URL`'s user and password) a member of `igsales_app`
/// with that password, as the owner (who needs CREATEROLE). The owner URL then never has to
/// reach anything but `migrate`, even to set up the role the app logs in as.
async fn ensure_app_login(
    mut conn: AsyncPgConnection,
    login: &str,
    password: &igsales_config::Secret,
) -> anyhow::Result<()> {
    use diesel::sql_types::Text;
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
    let role: LoginRole = diesel::sql_query(
        "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1) AS exists,
                coalesce((SELECT pg_has_role(oid, 'igsales_app', 'MEMBER') FROM pg_roles WHERE rolname = $1), false) AS member,
                (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) AS may_manage",
    )
    .bind::<Text, _>(login)
    .get_result(&mut conn)
    .await
    .context("reading the app's login role")?;
    if !role.may_manage {
        if role.exists && role.member {
            return Ok(());
        }
        bail!(
            "the login role of DATABASE_URL is not a member of igsales_app, and the owner may not manage roles (no CREATEROLE): run CREATE ROLE … LOGIN PASSWORD '…' IN ROLE igsales_app as an administrator"
        );
    }
    // Quoted by Postgres itself (%I, %L): the password never passes through our formatting.
    let mut templates = Vec::new();
    if !role.exists {
        templates.push("CREATE ROLE %I LOGIN PASSWORD %L IN ROLE igsales_app");
    } else {
        templates.push("ALTER ROLE %I LOGIN PASSWORD %L");
        if !role.member {
            templates.push("GRANT igsales_app TO %I");
        }
    }
    for template in templates {
        let statement: Statement = diesel::sql_query("SELECT format($1, $2, $3) AS sql")
            .bind::<Text, _>(template)
            .bind::<Text, _>(login)
            .bind::<Text, _>(password.expose())
            .get_result(&mut conn)
            .await
            .context("quoting the login role")?;
        conn.batch_execute(&statement.sql).await.map_err(|e| {
            anyhow::anyhow!("setting up the app's login role failed: {}", sanitized(&e))
        })?;
    }
    println!(
        "app login role {login}: {}",
        if role.exists {
            "password and membership up to date"
        } else {
            "created in igsales_app"
        }
    );
    Ok(())
}

/// A database error's kind, never its text (which could quote the statement, password included).
fn sanitized(e: &diesel::result::Error) -> String {
    match e {
        diesel::result::Error::DatabaseError(kind, _) => format!("{kind:?}"),
        _ => "query error".to_owned(),
    }
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

/// `merchant comments`: `--on` stores the rule as given; `--off` keeps its lists, switched off.
pub async fn merchant_comments(
    settings: &DbSettings,
    merchant: MerchantId,
    rule: CommentRule,
) -> anyhow::Result<()> {
    let db = Db::connect(settings).await?;
    let stored = db
        .as_merchant(merchant, async |c: &AsyncPgConnection| {
            if merchants::find(c, merchant).await?.is_none() {
                return Ok::<_, DbError>(None);
            }
            let rule = if rule.enabled {
                rule
            } else {
                CommentRule {
                    enabled: false,
                    ..comments::rule(c).await?
                }
            };
            comments::set_rule(c, merchant, &rule).await?;
            Ok(Some(rule))
        })
        .await
        .context("storing the comment rule")?;
    let Some(rule) = stored else {
        bail!("merchant {merchant} not found");
    };
    let list = |v: &[String], all: &str| {
        if v.is_empty() {
            all.to_owned()
        } else {
            v.join(", ")
        }
    };
    println!(
        "merchant {merchant} comments: {}; media: {}; triggers: {}; public reply: {}",
        if rule.enabled { "on" } else { "off" },
        list(&rule.media_ids, "all"),
        list(&rule.triggers, "any comment"),
        if rule.public_reply.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    Ok(())
}

/// `catalog link`: ties SKUs to a media id or a ref; unknown SKUs store nothing (exit 1).
pub async fn catalog_link(
    settings: &DbSettings,
    merchant: MerchantId,
    kind: LinkKind,
    key: &str,
    skus: &[String],
) -> anyhow::Result<()> {
    let db = Db::connect(settings).await?;
    let unknown = db
        .as_merchant(merchant, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(comments::link(c, merchant, kind, key, skus).await?)
        })
        .await
        .context("linking the products")?;
    if !unknown.is_empty() {
        bail!(
            "not in merchant {merchant}'s catalog: {} (nothing linked)",
            unknown.join(", ")
        );
    }
    let what = match kind {
        LinkKind::Media => "media",
        LinkKind::Ref => "ref",
    };
    println!("{what} {key}: {} product(s) linked", skus.len());
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

pub async fn catalog_search(
    settings: &DbSettings,
    merchant: MerchantId,
    text: &str,
    limit: i64,
) -> anyhow::Result<()> {
    let db = Db::connect(settings).await?;
    let query = products::SearchQuery {
        text: text.to_owned(),
        limit,
        embedding: None,
    };
    let outcome = db
        .as_merchant(merchant, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(products::search(c, &query).await?)
        })
        .await?;
    match outcome {
        products::SearchOutcome::NoMatch => println!("no match"),
        products::SearchOutcome::Found(hits) => {
            for (i, hit) in hits.iter().enumerate() {
                println!(
                    "{:>2}. {}  {:.3}  {}",
                    i + 1,
                    hit.product.sku,
                    hit.score,
                    hit.product.name
                );
            }
        }
    }
    Ok(())
}

pub async fn catalog_embed(access: &crate::cli::Embed, merchant: MerchantId) -> anyhow::Result<()> {
    let Some(client) = crate::sales::embed::EmbeddingClient::new(
        &access.model,
        &access.embedding,
        access.dns.cache,
    ) else {
        bail!("OPENAI_EMBEDDING_MODEL is not set: there is no model to embed the catalog with");
    };
    let db = Db::connect(&access.db).await?;
    let batch = i64::try_from(client.batch).unwrap_or(64);
    let mut done = 0usize;
    loop {
        let model = client.model().to_owned();
        let stale = db
            .as_merchant(merchant, async |c: &AsyncPgConnection| {
                Ok::<_, DbError>(products::stale_embeddings(c, &model, batch).await?)
            })
            .await?;
        if stale.is_empty() {
            break;
        }
        let texts = stale
            .iter()
            .map(|p| products::embedding_text(&p.name, &p.tags, &p.description))
            .collect();
        let vectors = client
            .embed(texts)
            .await
            .context("asking the model for embeddings")?;
        db.as_merchant(merchant, async |c: &AsyncPgConnection| {
            for (p, v) in stale.iter().zip(&vectors) {
                products::store_embedding(c, &p.sku, &p.key, v).await?;
            }
            Ok::<_, DbError>(())
        })
        .await?;
        done += stale.len();
        eprint!("\rembedded {done}");
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    println!("embedded {done} products for merchant {merchant}");
    Ok(())
}
