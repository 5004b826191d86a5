//! The fake LLM as a process, for a local sandbox: serves until SIGTERM or Ctrl-C.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use igsales_tests::fake_llm::{FakeLlm, FakeLlmConfig};

/// Fake OpenAI-compatible chat completions (`/v1/chat/completions`), offline and deterministic.
#[derive(Parser, Debug)]
#[command(name = "fake-llm")]
struct Args {
    /// Port to listen on; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Key expected as `Authorization: Bearer <key>` (default `test-llm-key`).
    #[arg(long)]
    api_key: Option<String>,
    /// Delay added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr = SocketAddr::new(args.host, args.port);
    let config = FakeLlmConfig {
        api_key: args.api_key.unwrap_or(FakeLlmConfig::default().api_key),
    };
    let fake = FakeLlm::start_on(addr, config)
        .await
        .with_context(|| format!("bind {addr}"))?;
    fake.set_latency(Duration::from_millis(args.latency_ms));
    igsales_tests::process::announce_then_wait_for_stop(&format!(
        "fake-llm listening on {}",
        listening_url(&fake)
    ))
    .await?;
    drop(fake);
    Ok(())
}

/// The bound address as given (`0.0.0.0` stays), unlike `base_url`, which is for connecting.
fn listening_url(fake: &FakeLlm) -> String {
    format!("http://{}/v1", fake.addr())
}
