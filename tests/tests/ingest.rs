//! The ingress's claim-and-push script against a real Redis: it writes a job exactly as
//! apalis-redis's own push does (compared key by key on two scratch databases, so an apalis
//! upgrade that changes its layout fails here), a claim set the old way (before the script, or
//! by an older ingress in a rolling deploy) still makes the event a duplicate, and deliveries of
//! one event racing each other push one job.

use std::collections::BTreeMap;

use igsales_jobs::ingest::{Arrival, Ingest};
use igsales_jobs::{InboundEventV1, InboundSignalV1, JobQueue, RedisConn};
use igsales_meta::webhook::EventKind;
use igsales_tests::TestRedis;
use redis::AsyncCommands;
use serde_json::value::RawValue;

const TTL: u64 = 172_800;

fn job(event_id: &str, kind: EventKind) -> InboundEventV1 {
    InboundEventV1 {
        merchant_id: uuid::Uuid::from_u128(7),
        instagram_account_id: "17841400538867190".into(),
        event_id: event_id.into(),
        kind,
        entry_time_ms: Some(1_762_022_388_574),
        received_at: chrono::DateTime::from_timestamp(1_762_022_389, 0).expect("time"),
        event: RawValue::from_string(r#"{"message":{"mid":"m1","text":"oi \u00e9"}}"#.into())
            .expect("json"),
        delivery: Default::default(),
    }
}

fn arrival(event_id: &str, kind: EventKind) -> Arrival {
    Arrival {
        claim: format!("dedupe:{}:{event_id}", uuid::Uuid::from_u128(7)),
        job: job(event_id, kind),
    }
}

async fn conn(r: &TestRedis) -> RedisConn {
    let client = redis::Client::open(r.url()).expect("url");
    RedisConn::fixed(
        redis::aio::ConnectionManager::new(client)
            .await
            .expect("connect"),
    )
}

/// Every key of the database with its type and contents; job ids become `<id>` (each push
/// makes its own) and scheduled scores `<now>` (checked to be within a minute of now).
async fn dump(c: &mut RedisConn) -> BTreeMap<String, String> {
    let keys: Vec<String> = c.keys("*").await.expect("keys");
    let mut ids: Vec<String> = Vec::new();
    for k in keys.iter().filter(|k| k.ends_with(":data")) {
        let fields: Vec<String> = c.hkeys(k).await.expect("hkeys");
        ids.extend(fields);
    }
    let norm = |s: &str| {
        let mut s = s.to_owned();
        for id in &ids {
            s = s.replace(id.as_str(), "<id>");
        }
        s
    };
    let now = chrono::Utc::now().timestamp() as f64;
    let mut out = BTreeMap::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(c)
            .await
            .expect("type");
        let value = match kind.as_str() {
            "hash" => {
                let h: BTreeMap<String, String> = c.hgetall(&k).await.expect("hgetall");
                format!("{h:?}")
            }
            "zset" => {
                let z: Vec<(String, f64)> = c.zrange_withscores(&k, 0, -1).await.expect("zrange");
                for (_, score) in &z {
                    assert!(
                        (score - now).abs() < 60.0,
                        "scheduled at {score}, now {now}"
                    );
                }
                format!("{:?}", z.iter().map(|(m, _)| m).collect::<Vec<_>>())
            }
            "list" => {
                let l: Vec<String> = c.lrange(&k, 0, -1).await.expect("lrange");
                format!("{l:?}")
            }
            "string" => {
                let v: String = c.get(&k).await.expect("get");
                let ttl: i64 = c.ttl(&k).await.expect("ttl");
                format!("{v} ttl>{}", ttl > 0)
            }
            other => other.to_owned(),
        };
        out.insert(format!("{}:{kind}", norm(&k)), norm(&value));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_script_writes_jobs_exactly_as_apalis_pushes_them() {
    let (a, b) = (TestRedis::lease().await, TestRedis::lease().await);
    let mut ca = conn(&a).await;
    JobQueue::<InboundEventV1>::new(ca.clone())
        .push(job("message:m1", EventKind::Message))
        .await
        .expect("apalis push");
    JobQueue::<InboundSignalV1>::new(ca.clone())
        .push(InboundSignalV1(job("echo:m2", EventKind::Echo)))
        .await
        .expect("apalis push");
    let mut cb = conn(&b).await;
    let pushed = Ingest::new()
        .claim_and_push(
            &mut cb,
            &[
                arrival("message:m1", EventKind::Message),
                arrival("echo:m2", EventKind::Echo),
            ],
            TTL,
            false,
        )
        .await
        .expect("script");
    assert_eq!(pushed, [true, true]);
    let (apalis, ours) = (dump(&mut ca).await, dump(&mut cb).await);
    // Ours adds only the two claims, "1" with the dedupe TTL.
    let (claims, jobs): (BTreeMap<_, _>, BTreeMap<_, _>) = ours
        .into_iter()
        .partition(|(k, _)| k.starts_with("dedupe:"));
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert!(claims.values().all(|v| v == "1 ttl>true"), "{claims:?}");
    assert_eq!(jobs, apalis, "our job layout must be apalis-redis's");
    assert!(
        apalis.contains_key("inbound_event:scheduled:zset")
            && apalis.contains_key("inbound_signal:data:hash"),
        "the layout compared is the one the worker fetches: {apalis:?}"
    );
    let ttl: i64 = cb
        .ttl(format!("dedupe:{}:message:m1", uuid::Uuid::from_u128(7)))
        .await
        .expect("ttl");
    assert!(ttl > TTL as i64 - 5 && ttl <= TTL as i64, "{ttl}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_claim_or_a_repeat_is_a_duplicate_and_writes_nothing() {
    let r = TestRedis::lease().await;
    let mut c = conn(&r).await;
    let ingest = Ingest::new();
    // The claim as the ingress before the script wrote it: SET key 1 EX ttl.
    let old = arrival("message:old", EventKind::Message);
    let () = c.set_ex(&old.claim, "1", TTL).await.expect("old claim");
    let pushed = ingest
        .claim_and_push(
            &mut c,
            &[old, arrival("message:new", EventKind::Message)],
            TTL,
            false,
        )
        .await
        .expect("script");
    assert_eq!(pushed, [false, true]);
    let jobs: usize = c.hlen("inbound_event:data").await.expect("hlen");
    assert_eq!(jobs, 1);
    // A redelivery of both: nothing more; with `touch` the claim is rewritten, TTL kept.
    let pushed = ingest
        .claim_and_push(
            &mut c,
            &[
                arrival("message:old", EventKind::Message),
                arrival("message:new", EventKind::Message),
            ],
            TTL,
            true,
        )
        .await
        .expect("script");
    assert_eq!(pushed, [false, false]);
    let jobs: usize = c.hlen("inbound_event:data").await.expect("hlen");
    let scheduled: usize = c.zcard("inbound_event:scheduled").await.expect("zcard");
    assert_eq!((jobs, scheduled), (1, 1));
    let ttl: i64 = c
        .ttl(format!("dedupe:{}:message:old", uuid::Uuid::from_u128(7)))
        .await
        .expect("ttl");
    assert!(ttl > 0 && ttl <= TTL as i64, "{ttl}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_of_one_event_racing_each_other_push_one_job() {
    let r = TestRedis::lease().await;
    let c = conn(&r).await;
    let ingest = std::sync::Arc::new(Ingest::new());
    // 20 events, each delivered by 8 tasks at once, in batches that overlap.
    let mut tasks = Vec::new();
    for copy in 0..8 {
        let (ingest, mut c) = (ingest.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let arrivals: Vec<Arrival> = (0..20)
                .map(|i| {
                    arrival(
                        &format!("message:race{}", (i + copy) % 20),
                        EventKind::Message,
                    )
                })
                .collect();
            ingest
                .claim_and_push(&mut c, &arrivals, TTL, false)
                .await
                .expect("script")
                .into_iter()
                .filter(|new| *new)
                .count()
        }));
    }
    let mut new = 0;
    for t in tasks {
        new += t.await.expect("task");
    }
    let mut c = c;
    let jobs: usize = c.hlen("inbound_event:data").await.expect("hlen");
    let claims: Vec<String> = c.keys("dedupe:*").await.expect("keys");
    assert_eq!((new, jobs, claims.len()), (20, 20, 20));
}
