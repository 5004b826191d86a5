//! `search-eval`: runs catalog queries through `products::search`, the worker's own search, as
//! the app role (scripts/search-eval sets up the database and scores the output; not run in CI).
//!
//! - `run`: one JSON line per query of a queries.jsonl, `{"id","skus","no_match"}`, the format
//!   the catalog-eval's `eval.py` scores. With `--embedding-url` and `--embedding-model` the
//!   query is embedded first (`POST {url}/embeddings`), as the worker does.
//! - `bench`: every query `--rounds` times against one merchant, one at a time; prints the
//!   latency of one search (its whole transaction) at p50, p95 and max.
//! - `generate`: a catalog CSV of `--count` products made from a base catalog's rows, each
//!   base product repeated as other product lines and model numbers (a big shop's catalog,
//!   the base's words as common in it as in the base).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use diesel_async::AsyncPgConnection;
use igsales_config::PgUrl;
use igsales_schema::products::{self, SearchOutcome, SearchQuery};
use igsales_schema::{Db, DbError, MerchantId};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "search-eval",
    about = "Catalog search evaluation and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Run(Target),
    Bench {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    Generate {
        /// The base catalog (CSV with a tags column).
        #[arg(long)]
        catalog: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
}

#[derive(Args, Debug)]
struct Target {
    /// The app role's URL (RLS applies, as in the worker).
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    merchant: MerchantId,
    #[arg(long)]
    queries: PathBuf,
    /// Products per query.
    #[arg(long, default_value_t = 10)]
    limit: i64,
    /// An OpenAI-compatible API base (e.g. http://127.0.0.1:PORT/v1) to embed queries with
    /// (the key from OPENAI_API_KEY).
    #[arg(long, requires = "embedding_model")]
    embedding_url: Option<String>,
    #[arg(long)]
    embedding_model: Option<String>,
}

#[derive(Deserialize)]
struct Query {
    id: String,
    text: String,
}

fn read_queries(path: &PathBuf) -> anyhow::Result<Vec<Query>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path:?}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("a query line"))
        .collect()
}

async fn connect(url: &str) -> anyhow::Result<Db> {
    let url = PgUrl::parse(url).map_err(anyhow::Error::msg)?;
    let settings = igsales_tests::db::db_settings(url, 2, Duration::from_secs(5));
    Ok(Db::connect(&settings).await?)
}

fn embed(base: &str, model: &str, text: &str) -> anyhow::Result<Vec<f32>> {
    #[derive(Deserialize)]
    struct Item {
        embedding: Vec<f32>,
    }
    #[derive(Deserialize)]
    struct Answer {
        data: Vec<Item>,
    }
    let body = serde_json::json!({ "model": model, "input": [text] });
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
    let answer: Answer = ureq::post(&format!("{}/embeddings", base.trim_end_matches('/')))
        .header("Authorization", &format!("Bearer {key}"))
        .send_json(&body)?
        .body_mut()
        .read_json()?;
    answer
        .data
        .into_iter()
        .next()
        .map(|i| i.embedding)
        .context("no embedding in the answer")
}

async fn search(db: &Db, target: &Target, text: &str) -> anyhow::Result<SearchOutcome> {
    let embedding = match (&target.embedding_url, &target.embedding_model) {
        (Some(url), Some(model)) => {
            let (url, model, text) = (url.clone(), model.clone(), text.to_owned());
            Some(tokio::task::spawn_blocking(move || embed(&url, &model, &text)).await??)
        }
        _ => None,
    };
    let query = SearchQuery {
        text: text.to_owned(),
        limit: target.limit,
        embedding,
    };
    Ok(db
        .as_merchant(target.merchant, async |c: &AsyncPgConnection| {
            Ok::<_, DbError>(products::search(c, &query).await?)
        })
        .await?)
}

async fn run(target: &Target) -> anyhow::Result<()> {
    let db = connect(&target.database_url).await?;
    let mut out = std::io::stdout().lock();
    for q in read_queries(&target.queries)? {
        let skus: Vec<String> = match search(&db, target, &q.text).await? {
            SearchOutcome::Found(hits) => hits.into_iter().map(|h| h.product.sku).collect(),
            SearchOutcome::NoMatch => Vec::new(),
        };
        let line = serde_json::json!({ "id": q.id, "no_match": skus.is_empty(), "skus": skus });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

async fn bench(target: &Target, rounds: usize) -> anyhow::Result<()> {
    let db = connect(&target.database_url).await?;
    let queries = read_queries(&target.queries)?;
    if queries.is_empty() {
        bail!("no queries");
    }
    // One untimed pass: connections made, plans cached, pages in memory, as in a running worker.
    for q in &queries {
        search(&db, target, &q.text).await?;
    }
    let mut times = Vec::with_capacity(queries.len() * rounds);
    for _ in 0..rounds {
        for q in &queries {
            let started = Instant::now();
            search(&db, target, &q.text).await?;
            times.push(started.elapsed());
        }
    }
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "searches={} p50_ms={:.1} p95_ms={:.1} max_ms={:.1}",
        times.len(),
        ms(at(0.50)),
        ms(at(0.95)),
        ms(at(1.0))
    );
    Ok(())
}

fn generate(catalog: &PathBuf, count: usize) -> anyhow::Result<()> {
    const LINES: &[&str] = &[
        "Essencial",
        "Premium",
        "Clássico",
        "Urbano",
        "Conforto",
        "Eco",
        "Studio",
    ];
    let mut reader = csv::Reader::from_path(catalog).with_context(|| format!("{catalog:?}"))?;
    let headers = reader.headers()?.clone();
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
    if rows.is_empty() {
        bail!("empty base catalog");
    }
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (sku, name, desc) = (col("sku"), col("name"), col("description"));
    let (Some(sku), Some(name), Some(desc)) = (sku, name, desc) else {
        bail!("the base catalog needs sku, name and description columns");
    };
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record(&headers)?;
    for i in 0..count {
        let base = &rows[i % rows.len()];
        let round = i / rows.len();
        let mut record: Vec<String> = base.iter().map(str::to_owned).collect();
        if round > 0 {
            let line = LINES[round % LINES.len()];
            record[sku] = format!("{}-V{round}", &base[sku]);
            record[name] = format!("{} {line} {round}", &base[name]);
            record[desc] = format!("{} Modelo {round}.", &base[desc]);
        }
        out.write_record(&record)?;
    }
    out.flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(target) => run(&target).await,
        Command::Bench { target, rounds } => bench(&target, rounds).await,
        Command::Generate { catalog, count } => generate(&catalog, count),
    }
}
