//! `worker` command line: clap reads every variable as text, [`Cli::check`] validates the
//! groups the command names (all problems at once, exit 2) and turns the command into the
//! [`Action`] that runs it; only then does anything connect. Each command maps to its action
//! here, once.

pub mod admin;
pub mod catalog;
pub mod commands;
pub mod dlq;
pub mod keys;

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use futures::future::LocalBoxFuture;
use igsales_config::{
    AppEnv, Checker, Common, CommonArgs, ConfigError, DbArgs, DbSettings, GraphArgs, GraphSettings,
    KeyArgs, PgUrl, RedisArgs, database, db_pool, dns, must,
};
use igsales_schema::MerchantId;
use igsales_schema::merchants::{Language, MerchantChanges};

use crate::handlers::settings::token_refresh;

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "igsales worker pool and operators' command line"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker pool: every queue and the crons, until SIGTERM.
    Run(Box<crate::handlers::settings::RunArgs>),
    /// Apply pending database migrations as the owner role.
    Migrate(MigrateArgs),
    /// Token encryption keys: what the stored tokens are under, and re-encryption.
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Create and configure merchants.
    Merchant {
        #[command(subcommand)]
        action: MerchantCommand,
    },
    /// The merchant's product catalog.
    Catalog {
        #[command(subcommand)]
        action: CatalogCommand,
    },
    /// Instagram tokens.
    Tokens {
        #[command(subcommand)]
        action: TokensCommand,
    },
    /// Connected Instagram accounts.
    Accounts {
        #[command(subcommand)]
        action: AccountsCommand,
    },
    /// Conversations.
    Conversation {
        #[command(subcommand)]
        action: ConversationCommand,
    },
    /// Dead-letter lists (`dlq:{job}`): inspect, replay, drain.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Enqueue token refreshes for one merchant's accounts, or for every account due.
    #[command(group(ArgGroup::new("which").required(true).args(["merchant", "due"])))]
    Refresh {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        window: token_refresh::Args,
        #[arg(long)]
        merchant: Option<MerchantId>,
        #[arg(long)]
        due: bool,
    },
}

igsales_config::groups! {
    /// What the account commands need: the accounts' rows and tokens, and Graph.
    pub struct AccountAccess => Access {
        db: DbArgs => DbSettings,
        keys: KeyArgs => igsales_config::keys::Settings,
        graph: GraphArgs => GraphSettings,
        dns: dns::Args => dns::Settings,
    }
}

igsales_config::groups! {
    /// What `catalog embed` needs: the products, and the model API's embeddings.
    pub struct EmbedAccess => Embed {
        db: DbArgs => DbSettings,
        model: crate::sales::llm::model::Args => crate::sales::llm::model::Settings,
        embedding: crate::sales::embed::embedding::Args => crate::sales::embed::embedding::Settings,
        dns: dns::Args => dns::Settings,
    }
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Subscribe the webhooks again (after Meta disabled them).
    #[command(group(ArgGroup::new("which").required(true).args(["merchant", "all"])))]
    Resubscribe {
        #[command(flatten)]
        access: AccountAccess,
        #[arg(long)]
        merchant: Option<MerchantId>,
        #[arg(long)]
        all: bool,
    },
    /// Unsubscribe an account and delete its token.
    Disconnect {
        #[command(flatten)]
        access: AccountAccess,
        #[arg(long)]
        merchant: MerchantId,
        /// The Instagram account id.
        #[arg(long)]
        account: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConversationCommand {
    /// Clear `needs_human` and any takeover pause: the assistant answers again.
    Resume {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        merchant: MerchantId,
        /// The customer's Instagram-scoped id.
        #[arg(long)]
        customer: String,
    },
}

/// Job names whose dead letters the CLI knows (`webhook_invalid` holds unreadable webhooks).
const DLQ_QUEUES: &[&str] = igsales_jobs::DEAD_LETTER_NAMES;

fn dlq_queue(s: &str) -> Result<String, String> {
    if s.starts_with("dlq:") {
        return Err("give the job name (e.g. send_message), not the dlq:… key".into());
    }
    if DLQ_QUEUES.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!("expected one of: {}", DLQ_QUEUES.join(", ")))
    }
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show dead letters, newest first (message text redacted unless --show-payload); every
    /// queue's, each row naming its queue, unless --queue picks one.
    List {
        #[command(flatten)]
        redis: RedisArgs,
        #[arg(long, value_parser = dlq_queue)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        show_payload: bool,
    },
    /// Push dead letters back to their queue as new jobs, then remove them.
    #[command(group(ArgGroup::new("which").required(true).args(["all", "id"])))]
    Replay {
        #[command(flatten)]
        redis: RedisArgs,
        #[arg(long, value_parser = dlq_queue)]
        queue: String,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        id: Option<String>,
    },
    /// Delete dead letters (all, or those older than --older-than); needs --yes.
    Drain {
        #[command(flatten)]
        redis: RedisArgs,
        #[arg(long, value_parser = dlq_queue)]
        queue: String,
        /// 30s, 30m, 12h, 7d.
        #[arg(long, value_parser = crate::cli::dlq::parse_age)]
        older_than: Option<Duration>,
        #[arg(long, required = true)]
        yes: bool,
    },
}

fn pg_url(s: &str) -> Result<PgUrl, String> {
    PgUrl::parse(s)
}

const OWNER_FORM: &str = "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=MODE&sslrootcert=CA.pem] (the owner role; or set DATABASE_URL)";

fn migration_rules(p: &migration::Partial, env: Option<AppEnv>, c: &mut Checker) {
    let url = p.owner_url.as_ref().and_then(Option::as_ref);
    igsales_config::pg_tls_rule("MIGRATION_DATABASE_URL", url, env, c);
}

igsales_config::group! {
    /// The schema owner, who alone may migrate.
    pub mod migration {
        @rules migration_rules;
        /// The owner role; defaults to DATABASE_URL. Takes sslmode/sslrootcert as DATABASE_URL
        /// does, under the same production rule.
        MIGRATION_DATABASE_URL => owner_url: Option<PgUrl> = optional, parsed(OWNER_FORM, pg_url);
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    owner: migration::Args,
    #[command(flatten)]
    app: database::Args,
    #[command(flatten)]
    pool: db_pool::Args,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Stored tokens per key version.
    Status(KeysArgs),
    /// Re-encrypt every token not under the first key of ENCRYPTION_KEY (idempotent, resumable).
    Rotate(KeysArgs),
}

#[derive(Debug, Subcommand)]
pub enum MerchantCommand {
    /// Create a merchant; prints only its id.
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, value_parser = bounded_text(1, 200))]
        name: String,
        /// How the assistant speaks for this merchant (default: a neutral persona).
        #[arg(long, value_parser = bounded_text(1, 4000))]
        persona: Option<String>,
    },
    /// Change a merchant's persona, AI replies, hand-off message or language.
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["persona", "ai", "handoff_message", "language"])))]
    Set {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        merchant: MerchantId,
        #[arg(long, value_parser = bounded_text(1, 4000))]
        persona: Option<String>,
        #[arg(long)]
        ai: Option<OnOff>,
        /// The message sent once when a customer asks for a person: one Instagram message,
        /// at most 1000 bytes of UTF-8.
        #[arg(long, value_parser = bounded_bytes(1, 1000))]
        handoff_message: Option<String>,
        /// The language of cards and quick replies, price formats and catalog search.
        #[arg(long, value_parser = language())]
        language: Option<Language>,
    },
    /// Answer comments under the merchant's posts with a private reply (`--on`, with the
    /// media and trigger words given, which replace earlier ones), or stop (`--off`).
    #[command(group(ArgGroup::new("switch").required(true).args(["on", "off"])))]
    Comments {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        merchant: MerchantId,
        #[arg(long)]
        on: bool,
        #[arg(long)]
        off: bool,
        /// Only comments on these media ids (default: every post and reel).
        #[arg(long, num_args = 1.., value_parser = bounded_text(1, 200))]
        media: Vec<String>,
        /// Only comments with one of these words (default: every comment).
        #[arg(long, num_args = 1.., value_parser = bounded_text(1, 100))]
        trigger: Vec<String>,
        /// Also reply under the comment, once, with this text (e.g. "Te chamei no direct!").
        #[arg(long, value_parser = bounded_text(1, 300))]
        public_reply: Option<String>,
    },
    /// Set the ice breakers (up to 4 questions a customer can tap to start a conversation) on
    /// every connected Instagram account of the merchant, replacing earlier ones, or remove
    /// them (`--clear`).
    #[command(group(ArgGroup::new("what").required(true).args(["set", "clear"])))]
    IceBreakers {
        #[command(flatten)]
        access: AccountAccess,
        #[arg(long)]
        merchant: MerchantId,
        /// "Question|payload": the question shown (at most 80 characters) and what its tap
        /// carries back; repeat for each question, at most 4.
        #[arg(long, num_args = 1.., value_parser = ice_breaker)]
        set: Vec<igsales_meta::IceBreaker>,
        #[arg(long)]
        clear: bool,
    },
}

/// `Question|payload`, split at the first `|` (a payload may hold more); both sides required.
fn ice_breaker(s: &str) -> Result<igsales_meta::IceBreaker, String> {
    let Some((question, payload)) = s.split_once('|') else {
        return Err("expected \"Question|payload\" (no | found)".into());
    };
    let (question, payload) = (question.trim(), payload.trim());
    if question.is_empty() || payload.is_empty() {
        return Err("expected \"Question|payload\" with both sides non-empty".into());
    }
    Ok(igsales_meta::IceBreaker {
        question: question.to_owned(),
        payload: payload.to_owned(),
    })
}

fn language() -> impl clap::builder::TypedValueParser<Value = Language> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Language::ALL.iter().map(|l| l.as_str()))
        .try_map(|s| s.parse::<Language>())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Upsert products by SKU from a .csv or .json file; any bad row imports nothing.
    Import {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        merchant: MerchantId,
        file: PathBuf,
    },
    /// Embed the products whose embedding is missing or stale (their text or the model
    /// changed), for semantic search; needs OPENAI_EMBEDDING_MODEL.
    Embed {
        #[command(flatten)]
        access: Box<EmbedAccess>,
        #[arg(long)]
        merchant: MerchantId,
    },
    /// Tie products to a post or reel (`--media`) or an ig.me link's ref (`--ref`): the model
    /// is shown them first for comments on it and customers coming from it. The SKUs replace
    /// the ones tied before; none unties them all.
    #[command(group(ArgGroup::new("target").required(true).args(["media", "ref_"])))]
    Link {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        merchant: MerchantId,
        #[arg(long, value_parser = bounded_text(1, 200))]
        media: Option<String>,
        #[arg(long = "ref", value_parser = bounded_text(1, 200))]
        ref_: Option<String>,
        #[arg(long, num_args = 1.., value_parser = bounded_text(1, 200))]
        sku: Vec<String>,
    },
    /// Search the catalog as a customer's message would: ranked SKUs with scores, or "no match".
    Search {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        merchant: MerchantId,
        /// At most this many products.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..=100))]
        limit: i64,
        /// The customer's words.
        text: String,
    },
}

fn bounded_text(min: usize, max: usize) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s| {
        let n = s.trim().chars().count();
        if (min..=max).contains(&n) {
            Ok(s.trim().to_owned())
        } else {
            Err(format!("expected {min}–{max} characters"))
        }
    }
}

/// Text that must fit one Instagram message, which counts UTF-8 bytes, not characters.
fn bounded_bytes(min: usize, max: usize) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s| {
        let t = s.trim();
        if (min..=max).contains(&t.len()) {
            Ok(t.to_owned())
        } else {
            Err(format!(
                "expected {min}–{max} bytes of UTF-8 (one Instagram message); got {} bytes ({} characters)",
                t.len(),
                t.chars().count()
            ))
        }
    }
}

/// A command with every setting validated, ready to run.
pub struct Action(LocalBoxFuture<'static, anyhow::Result<()>>);

impl Action {
    fn of(run: impl Future<Output = anyhow::Result<()>> + 'static) -> Action {
        Action(Box::pin(run))
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.0.await
    }
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Action")
    }
}

impl Cli {
    pub fn check(self) -> Result<(Common, Action), ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check(&mut c, None);
        let env = common.as_ref().map(|c| c.app_env);
        let action = self.command.check(&mut c, env);
        c.finish()?;
        Ok((must(common), must(action)))
    }
}

impl Command {
    fn check(self, c: &mut Checker, env: Option<AppEnv>) -> Option<Action> {
        match self {
            Command::Run(args) => args
                .check(c, env)
                .and_then(|s| s.checked(c, env))
                .map(|s| Action::of(crate::handlers::run(s))),
            Command::Migrate(args) => check_migrate(c, env, args),
            Command::Keys { action } => {
                let (args, rotate) = match action {
                    KeysCommand::Status(a) => (a, false),
                    KeysCommand::Rotate(a) => (a, true),
                };
                let db = args.db.check(c, env);
                let ring = args.keys.check(c, env);
                let (db, ring) = (db?, ring?.ring);
                Some(if rotate {
                    Action::of(async move { keys::rotate(&db, &ring).await })
                } else {
                    Action::of(async move { keys::status(&db, &ring).await })
                })
            }
            Command::Merchant {
                action: MerchantCommand::Create { db, name, persona },
            } => db.check(c, env).map(|db| {
                Action::of(async move {
                    commands::merchant_create(&db, &name, persona.as_deref()).await
                })
            }),
            Command::Merchant {
                action:
                    MerchantCommand::Set {
                        db,
                        merchant,
                        persona,
                        ai,
                        handoff_message,
                        language,
                    },
            } => db.check(c, env).map(|db| {
                let changes = MerchantChanges {
                    persona,
                    ai_enabled: ai.map(|a| matches!(a, OnOff::On)),
                    handoff_message,
                    language,
                };
                Action::of(async move { commands::merchant_set(&db, merchant, &changes).await })
            }),
            Command::Catalog {
                action: CatalogCommand::Import { db, merchant, file },
            } => {
                let ext = file
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase);
                if !matches!(ext.as_deref(), Some("csv" | "json")) {
                    c.invalid("FILE", "a catalog file ending in .csv or .json");
                }
                db.check(c, env).map(|db| {
                    Action::of(async move { commands::catalog_import(&db, merchant, &file).await })
                })
            }
            Command::Merchant {
                action:
                    MerchantCommand::Comments {
                        db,
                        merchant,
                        on,
                        off: _,
                        media,
                        trigger,
                        public_reply,
                    },
            } => db.check(c, env).map(|db| {
                let rule = igsales_schema::comments::CommentRule {
                    enabled: on,
                    media_ids: media,
                    triggers: trigger,
                    public_reply,
                };
                Action::of(async move { commands::merchant_comments(&db, merchant, rule).await })
            }),
            Command::Merchant {
                action:
                    MerchantCommand::IceBreakers {
                        access,
                        merchant,
                        set,
                        clear: _,
                    },
            } => {
                // Meta's limits (count, lengths) are checked before anything connects.
                if !set.is_empty()
                    && let Err(e) = igsales_meta::check_ice_breakers(&set)
                {
                    c.invalid("--set", format!("ice breakers within Meta's limits ({e})"));
                }
                access.check(c, env).map(|access| {
                    Action::of(async move {
                        admin::merchant_ice_breakers(&access, merchant, &set).await
                    })
                })
            }
            Command::Catalog {
                action:
                    CatalogCommand::Link {
                        db,
                        merchant,
                        media,
                        ref_,
                        sku,
                    },
            } => db.check(c, env).map(|db| {
                let (kind, key) = match (media, ref_) {
                    (Some(m), _) => (igsales_schema::comments::LinkKind::Media, m),
                    (None, r) => (
                        igsales_schema::comments::LinkKind::Ref,
                        r.unwrap_or_default(),
                    ),
                };
                Action::of(
                    async move { commands::catalog_link(&db, merchant, kind, &key, &sku).await },
                )
            }),
            Command::Catalog {
                action: CatalogCommand::Embed { access, merchant },
            } => access.check(c, env).map(|access| {
                Action::of(async move { commands::catalog_embed(&access, merchant).await })
            }),
            Command::Catalog {
                action:
                    CatalogCommand::Search {
                        db,
                        merchant,
                        limit,
                        text,
                    },
            } => db.check(c, env).map(|db| {
                Action::of(
                    async move { commands::catalog_search(&db, merchant, &text, limit).await },
                )
            }),
            Command::Tokens {
                action:
                    TokensCommand::Refresh {
                        db,
                        redis,
                        window,
                        merchant,
                        due: _,
                    },
            } => {
                let db = db.check(c, env);
                let redis = redis.check(c, env);
                let window = window.check(c, env);
                let (db, redis, window) = (db?, redis?, window?.window);
                Some(Action::of(async move {
                    admin::tokens_refresh(&db, &redis, merchant, window).await
                }))
            }
            Command::Accounts {
                action:
                    AccountsCommand::Resubscribe {
                        access,
                        merchant,
                        all: _,
                    },
            } => access.check(c, env).map(|access| {
                Action::of(async move { admin::accounts_resubscribe(&access, merchant).await })
            }),
            Command::Accounts {
                action:
                    AccountsCommand::Disconnect {
                        access,
                        merchant,
                        account,
                    },
            } => access.check(c, env).map(|access| {
                Action::of(
                    async move { admin::accounts_disconnect(&access, merchant, &account).await },
                )
            }),
            Command::Conversation {
                action:
                    ConversationCommand::Resume {
                        db,
                        merchant,
                        customer,
                    },
            } => db.check(c, env).map(|db| {
                Action::of(
                    async move { admin::conversation_resume(&db, merchant, &customer).await },
                )
            }),
            Command::Dlq { action } => match action {
                DlqCommand::List {
                    redis,
                    queue,
                    limit,
                    json,
                    show_payload,
                } => redis.check(c, env).map(|redis| {
                    Action::of(async move {
                        dlq::list(&redis, queue.as_deref(), limit, json, show_payload).await
                    })
                }),
                DlqCommand::Replay {
                    redis,
                    queue,
                    all: _,
                    id,
                } => {
                    if !dlq::REPLAYABLE.contains(&queue.as_str()) {
                        c.invalid(
                            "--queue",
                            format!(
                                "a queue whose jobs can be replayed: {}",
                                dlq::REPLAYABLE.join(", ")
                            ),
                        );
                    }
                    redis.check(c, env).map(|redis| {
                        Action::of(async move { dlq::replay(&redis, &queue, id.as_deref()).await })
                    })
                }
                DlqCommand::Drain {
                    redis,
                    queue,
                    older_than,
                    yes: _,
                } => redis.check(c, env).map(|redis| {
                    Action::of(async move { dlq::drain(&redis, &queue, older_than).await })
                }),
            },
        }
    }
}

/// `MIGRATION_DATABASE_URL` wins; `DATABASE_URL` is the fallback. Whichever is used is named.
fn check_migrate(c: &mut Checker, env: Option<AppEnv>, args: MigrateArgs) -> Option<Action> {
    let owner = args.owner.check(c, env);
    let app_url_set = args
        .app
        .DATABASE_URL
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty());
    // With a separate owner, DATABASE_URL (when given) names the login role to keep in step.
    let (url, app_login) = match owner.map(|o| o.owner_url) {
        Some(Some(url)) => {
            let app = if app_url_set {
                args.app.check(c, env).map(|d| d.url)
            } else {
                None
            };
            (Some(("MIGRATION_DATABASE_URL", url)), app)
        }
        Some(None) if app_url_set => (
            args.app.check(c, env).map(|d| ("DATABASE_URL", d.url)),
            None,
        ),
        Some(None) => {
            c.missing("MIGRATION_DATABASE_URL", OWNER_FORM);
            (None, None)
        }
        None => (None, None),
    };
    let pool = args.pool.check(c, env);
    let ((var, url), connect_timeout) = (url?, pool?.connect_timeout);
    Some(Action::of(async move {
        commands::migrate(&url, var, connect_timeout, app_login.as_ref()).await
    }))
}
