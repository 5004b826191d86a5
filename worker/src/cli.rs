//! `worker` command line: clap reads every variable as text, [`Cli::check`] turns it into a
//! validated [`Action`] (all problems at once, exit 2), and only then does anything connect.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use igsales_config::Unit;
use igsales_config::{
    Checker, Common, CommonArgs, ConfigError, DbArgs, DbSettings, KeyArgs, KeyRing, PgUrl,
    RedisArgs, RedisSettings, must,
};
use igsales_schema::MerchantId;
use igsales_schema::merchants::MerchantChanges;

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
    Run(Box<crate::runtime::RunArgs>),
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
        #[arg(long)]
        merchant: Option<MerchantId>,
        #[arg(long)]
        due: bool,
        #[arg(
            long,
            env = "TOKEN_REFRESH_WINDOW_DAYS",
            default_value = "10",
            hide_env_values = true
        )]
        token_refresh_window_days: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Subscribe the webhooks again (after Meta disabled them).
    #[command(group(ArgGroup::new("which").required(true).args(["merchant", "all"])))]
    Resubscribe {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        graph: igsales_config::GraphArgs,
        #[arg(long)]
        merchant: Option<MerchantId>,
        #[arg(long)]
        all: bool,
    },
    /// Unsubscribe an account and delete its token.
    Disconnect {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        graph: igsales_config::GraphArgs,
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
        #[arg(long, value_parser = crate::dlq::parse_age)]
        older_than: Option<Duration>,
        #[arg(long, required = true)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The owner role; defaults to DATABASE_URL.
    #[arg(long, env = "MIGRATION_DATABASE_URL", hide_env_values = true)]
    migration_database_url: Option<String>,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[arg(
        long,
        env = "DATABASE_CONNECT_TIMEOUT_MS",
        default_value = "5000",
        hide_env_values = true
    )]
    database_connect_timeout_ms: String,
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
    /// Change a merchant's persona, AI replies or hand-off message.
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["persona", "ai", "handoff_message"])))]
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
    },
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

/// A command with every setting validated.
#[derive(Debug)]
pub enum Action {
    Run(Box<crate::runtime::RunSettings>),
    Migrate {
        url: PgUrl,
        var: &'static str,
        connect_timeout: Duration,
    },
    KeysStatus {
        db: DbSettings,
        ring: KeyRing,
    },
    KeysRotate {
        db: DbSettings,
        ring: KeyRing,
    },
    MerchantCreate {
        db: DbSettings,
        name: String,
        persona: Option<String>,
    },
    MerchantSet {
        db: DbSettings,
        merchant: MerchantId,
        changes: MerchantChanges,
    },
    CatalogImport {
        db: DbSettings,
        merchant: MerchantId,
        file: PathBuf,
    },
    TokensRefresh {
        db: DbSettings,
        redis: RedisSettings,
        merchant: Option<MerchantId>,
        window: Duration,
    },
    AccountsResubscribe {
        db: DbSettings,
        keys: KeyRing,
        graph: igsales_config::GraphSettings,
        merchant: Option<MerchantId>,
    },
    AccountsDisconnect {
        db: DbSettings,
        keys: KeyRing,
        graph: igsales_config::GraphSettings,
        merchant: MerchantId,
        account: String,
    },
    ConversationResume {
        db: DbSettings,
        merchant: MerchantId,
        customer: String,
    },
    DlqList {
        redis: RedisSettings,
        queue: Option<String>,
        limit: usize,
        json: bool,
        show_payload: bool,
    },
    DlqReplay {
        redis: RedisSettings,
        queue: String,
        id: Option<String>,
    },
    DlqDrain {
        redis: RedisSettings,
        queue: String,
        older_than: Option<Duration>,
    },
}

impl Cli {
    pub fn check(self) -> Result<(Common, Action), ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check(&mut c);
        let action = match self.command {
            Command::Run(args) => {
                let env = common.as_ref().map(|c| c.app_env);
                args.check(&mut c, env).map(|s| Action::Run(Box::new(s)))
            }
            Command::Migrate(args) => check_migrate(&mut c, args),
            Command::Keys { action } => {
                let (args, rotate) = match action {
                    KeysCommand::Status(a) => (a, false),
                    KeysCommand::Rotate(a) => (a, true),
                };
                let db = args.db.check(&mut c);
                let ring = args.keys.check(&mut c);
                db.zip(ring).map(|(db, ring)| {
                    if rotate {
                        Action::KeysRotate { db, ring }
                    } else {
                        Action::KeysStatus { db, ring }
                    }
                })
            }
            Command::Merchant {
                action: MerchantCommand::Create { db, name, persona },
            } => db
                .check(&mut c)
                .map(|db| Action::MerchantCreate { db, name, persona }),
            Command::Merchant {
                action:
                    MerchantCommand::Set {
                        db,
                        merchant,
                        persona,
                        ai,
                        handoff_message,
                    },
            } => db.check(&mut c).map(|db| Action::MerchantSet {
                db,
                merchant,
                changes: MerchantChanges {
                    persona,
                    ai_enabled: ai.map(|a| matches!(a, OnOff::On)),
                    handoff_message,
                },
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
                db.check(&mut c)
                    .map(|db| Action::CatalogImport { db, merchant, file })
            }
            Command::Tokens {
                action:
                    TokensCommand::Refresh {
                        db,
                        redis,
                        merchant,
                        due: _,
                        token_refresh_window_days,
                    },
            } => {
                let env = common.as_ref().map(|c| c.app_env);
                let db = db.check(&mut c);
                let redis = redis.check(&mut c, env);
                let window = c.duration(
                    "TOKEN_REFRESH_WINDOW_DAYS",
                    &token_refresh_window_days,
                    Unit::Days,
                    1,
                    59,
                );
                (|| {
                    Some(Action::TokensRefresh {
                        db: db?,
                        redis: redis?,
                        merchant,
                        window: window?,
                    })
                })()
            }
            Command::Accounts {
                action:
                    AccountsCommand::Resubscribe {
                        db,
                        keys,
                        graph,
                        merchant,
                        all: _,
                    },
            } => {
                let (db, keys, graph) = (db.check(&mut c), keys.check(&mut c), graph.check(&mut c));
                (|| {
                    Some(Action::AccountsResubscribe {
                        db: db?,
                        keys: keys?,
                        graph: graph?,
                        merchant,
                    })
                })()
            }
            Command::Accounts {
                action:
                    AccountsCommand::Disconnect {
                        db,
                        keys,
                        graph,
                        merchant,
                        account,
                    },
            } => {
                let (db, keys, graph) = (db.check(&mut c), keys.check(&mut c), graph.check(&mut c));
                (|| {
                    Some(Action::AccountsDisconnect {
                        db: db?,
                        keys: keys?,
                        graph: graph?,
                        merchant,
                        account,
                    })
                })()
            }
            Command::Conversation {
                action:
                    ConversationCommand::Resume {
                        db,
                        merchant,
                        customer,
                    },
            } => db.check(&mut c).map(|db| Action::ConversationResume {
                db,
                merchant,
                customer,
            }),
            Command::Dlq { action } => {
                let env = common.as_ref().map(|c| c.app_env);
                match action {
                    DlqCommand::List {
                        redis,
                        queue,
                        limit,
                        json,
                        show_payload,
                    } => redis.check(&mut c, env).map(|redis| Action::DlqList {
                        redis,
                        queue,
                        limit,
                        json,
                        show_payload,
                    }),
                    DlqCommand::Replay {
                        redis,
                        queue,
                        all: _,
                        id,
                    } => {
                        if !crate::dlq::REPLAYABLE.contains(&queue.as_str()) {
                            c.invalid(
                                "--queue",
                                format!(
                                    "a queue whose jobs can be replayed: {}",
                                    crate::dlq::REPLAYABLE.join(", ")
                                ),
                            );
                        }
                        redis
                            .check(&mut c, env)
                            .map(|redis| Action::DlqReplay { redis, queue, id })
                    }
                    DlqCommand::Drain {
                        redis,
                        queue,
                        older_than,
                        yes: _,
                    } => redis.check(&mut c, env).map(|redis| Action::DlqDrain {
                        redis,
                        queue,
                        older_than,
                    }),
                }
            }
        };
        c.finish()?;
        Ok((must(common), must(action)))
    }
}

fn check_migrate(c: &mut Checker, args: MigrateArgs) -> Option<Action> {
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    // MIGRATION_DATABASE_URL wins; DATABASE_URL is the fallback. Whichever is used is named.
    let (var, raw) = if present(&args.migration_database_url) {
        ("MIGRATION_DATABASE_URL", args.migration_database_url)
    } else if present(&args.database_url) {
        ("DATABASE_URL", args.database_url)
    } else {
        ("MIGRATION_DATABASE_URL", None)
    };
    let form = format!("{} (the owner role; or set DATABASE_URL)", PgUrl::FORM);
    let url = c.required(var, raw.as_deref(), &form, PgUrl::parse);
    let connect_timeout = c.millis(
        "DATABASE_CONNECT_TIMEOUT_MS",
        &args.database_connect_timeout_ms,
        1,
        600_000,
    );
    Some(Action::Migrate {
        url: url?,
        var,
        connect_timeout: connect_timeout?,
    })
}
