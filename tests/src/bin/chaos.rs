//! `scripts/chaos`: the chaos run of issue #10 at full size (see `igsales_tests::chaos`). Prints
//! the one-line summary and a breakdown; exits 1 unless `duplicate_sends=0` and `lost=0`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use igsales_tests::chaos::{ChaosConfig, run};

#[derive(Parser)]
struct Args {
    /// Where the release `ingress` and `worker` are.
    #[arg(long)]
    bins: PathBuf,
    /// The app role's URL of a migrated database.
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value_t = 5_000)]
    dms: usize,
    #[arg(long, default_value_t = 20)]
    accounts: usize,
    /// DMs are spread over this many seconds.
    #[arg(long, default_value_t = 60)]
    send_secs: u64,
    #[arg(long, default_value_t = 20)]
    kill_every_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let s = Duration::from_secs;
    let report = run(ChaosConfig {
        bins: a.bins,
        database_url: a.database_url,
        dms: a.dms,
        accounts: a.accounts,
        send_for: s(a.send_secs),
        kill_every: Some(s(a.kill_every_secs)),
        redis_stall: Some((s(8), s(4))),
        pg_outage: Some((s(16), s(20))),
        redis_restart: Some(s(44)),
        duplicate_share: 0.1,
        graph_fault_every: Some(Duration::from_millis(250)),
        echo_confirm: s(60),
        drain_within: s(300),
    })
    .await?;
    println!("{}", report.line());
    println!("{}", report.breakdown());
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
