//! Test support shared by the workspace's tests: isolated databases and roles, running the
//! real binaries, the fake Meta and fake LLM servers, the whole stack. The end-to-end tests
//! themselves live in `tests/tests/`.

pub mod certs;
pub mod chaos;
pub mod cli;
pub mod db;
pub mod fake_llm;
pub mod fake_meta;
pub mod http;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod sandbox_page;
pub mod sentinel;
mod served;
pub mod shops;
pub mod stack;
pub mod tls_postgres;
pub mod tls_redis;
pub mod worker_env;

pub use db::TestDb;
pub use redis::{PrivateRedis, TestRedis};
