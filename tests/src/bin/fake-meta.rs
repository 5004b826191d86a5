//! The fake Meta as a process, for a local sandbox: serves until SIGTERM or Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use clap::Parser;
use igsales_tests::fake_meta::{FakeAccount, FakeMeta, FakeMetaConfig};

/// Fake Instagram Login OAuth and Graph API on 127.0.0.1.
#[derive(Parser, Debug)]
#[command(name = "fake-meta")]
struct Args {
    /// Port to listen on; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Instagram app id expected as `client_id`.
    #[arg(long)]
    client_id: Option<String>,
    /// Instagram app secret expected as `client_secret`.
    #[arg(long)]
    client_secret: Option<String>,
    /// A registered OAuth redirect URI (repeatable); none accepts any.
    #[arg(long = "redirect-uri")]
    redirect_uris: Vec<String>,
    /// IG professional account id (webhook `entry.id`, `/me` user_id).
    #[arg(long)]
    account_user_id: Option<String>,
    /// App-scoped id (`/me` id, token-exchange user_id).
    #[arg(long)]
    account_app_scoped_id: Option<String>,
    #[arg(long)]
    username: Option<String>,
}

impl Args {
    fn config(self) -> FakeMetaConfig {
        let defaults = FakeMetaConfig::default();
        let account = FakeAccount {
            user_id: self.account_user_id.unwrap_or(defaults.account.user_id),
            app_scoped_id: self
                .account_app_scoped_id
                .unwrap_or(defaults.account.app_scoped_id),
            username: self.username.unwrap_or(defaults.account.username),
        };
        FakeMetaConfig {
            client_id: self.client_id.unwrap_or(defaults.client_id),
            client_secret: self.client_secret.unwrap_or(defaults.client_secret),
            redirect_uris: self.redirect_uris,
            account,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let fake = FakeMeta::start_on(addr, args.config())
        .await
        .with_context(|| format!("bind {addr}"))?;
    igsales_tests::process::announce_then_wait_for_stop(&format!(
        "fake-meta listening on {}",
        fake.base_url()
    ))
    .await?;
    drop(fake);
    Ok(())
}
