//! The deployment files agree with each other and with the configuration contract (SPEC §3,
//! §7): one port (10000) in `.env.example`, `compose.yaml`, the `Containerfile` and nginx's
//! upstream; every SPEC §3 variable (and every variable the binaries read) in `.env.example`,
//! and nothing there that looks like a real secret.
//!
//! No YAML parser is in the workspace, so `compose.yaml` is read with simple line-based checks
//! (a service is the block of lines indented under `  name:` in `services:`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const PORT: &str = "10000";

/// The variables of SPEC §3's table. When `../shared/SPEC.md` is beside the repository (as for
/// CI), [`spec_variables_are_the_ones_listed_here`] checks this list against it.
const SPEC_VARIABLES: &[&str] = &[
    "META_APP_ID",
    "IG_APP_SECRET",
    "META_APP_SECRET",
    "GRAPH_API_VERSION",
    "API_BASE_URL",
    "ENCRYPTION_KEY",
    "DATABASE_URL",
    "MIGRATION_DATABASE_URL",
    "REDIS_URL",
    "OPENAI_API_KEY",
    "PORT",
    "META_WEBHOOK_VERIFY_TOKEN",
    "ADMIN_API_TOKEN",
    "OAUTH_SUCCESS_REDIRECT_URL",
    "OAUTH_FAILURE_REDIRECT_URL",
    "GRAPH_API_BASE_URL",
    "IG_OAUTH_BASE_URL",
    "IG_AUTHORIZE_URL",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "APP_ENV",
    "CORS_ALLOWED_ORIGINS",
    "WEBHOOK_MAX_BODY_BYTES",
    "METRICS_PORT",
    "WORKER_CONCURRENCY",
    "JOB_MAX_ATTEMPTS",
    "JOB_BACKOFF_BASE_MS",
    "JOB_BACKOFF_MAX_MS",
    "WORKER_ORPHAN_TIMEOUT_SECS",
    "TOKEN_REFRESH_CRON",
    "TOKEN_REFRESH_WINDOW_DAYS",
    "GRAPH_SEND_RATE_PER_SEC",
    "HUMAN_TAKEOVER_MINUTES",
    "ECHO_CONFIRM_SECS",
    "RETENTION_DAYS",
    "DATABASE_POOL_SIZE",
    "DATABASE_STATEMENT_TIMEOUT_MS",
    "LOG_FORMAT",
    "RUST_LOG",
];

/// The crates whose binaries read the environment (clap `env = "…"`).
const APP_CRATES: &[&str] = &["config", "schema", "jobs", "meta", "ingress", "worker"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `.env.example` as (line number, name, value), comments and blank lines skipped.
fn env_example() -> Vec<(usize, String, String)> {
    read(".env.example")
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|(i, l)| {
            let (name, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!(".env.example:{}: not NAME=value: {l:?}", i + 1));
            (i + 1, name.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

fn env_value(name: &str) -> String {
    env_example()
        .into_iter()
        .find(|(_, n, _)| n == name)
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!(".env.example has no {name}"))
}

/// The lines of one top-level section of `compose.yaml` (`services:`, `volumes:` …), or of one
/// service: everything indented deeper than the key's own line, up to the next line that is not.
fn yaml_block(lines: &[&str], key_line: &str) -> Vec<String> {
    let start = lines
        .iter()
        .position(|l| l.trim_end() == key_line || l.starts_with(&format!("{key_line} &")))
        .unwrap_or_else(|| panic!("compose.yaml has no line {key_line:?}"));
    let indent = key_line.len() - key_line.trim_start().len();
    lines[start + 1..]
        .iter()
        .take_while(|l| {
            l.trim().is_empty()
                || l.trim_start().starts_with('#')
                || l.len() - l.trim_start().len() > indent
        })
        .map(|l| l.to_string())
        .collect()
}

fn compose_service(name: &str) -> Vec<String> {
    let compose = read("compose.yaml");
    let lines: Vec<&str> = compose.lines().collect();
    let services = yaml_block(&lines, "services:");
    let services: Vec<&str> = services.iter().map(String::as_str).collect();
    yaml_block(&services, &format!("  {name}:"))
}

/// `"10000"`, `'10000'` or `10000` → `10000`; trailing comments dropped.
fn scalar(s: &str) -> &str {
    let s = s.split(" #").next().unwrap_or(s).trim();
    s.trim_matches(|c| c == '"' || c == '\'')
}

#[test]
fn env_example_port_is_10000() {
    assert_eq!(env_value("PORT"), PORT);
}

#[test]
fn compose_ingress_listens_on_10000_and_exposes_it() {
    let ingress = compose_service("ingress");
    let port_env: Vec<&str> = ingress
        .iter()
        .filter_map(|l| l.trim().strip_prefix("- PORT="))
        .map(scalar)
        .collect();
    assert_eq!(
        port_env,
        [PORT],
        "compose.yaml: the ingress's PORT is pinned to {PORT} (an env file cannot move it away from nginx's upstream)"
    );
    let exposed: Vec<&str> = ingress
        .iter()
        .skip_while(|l| l.trim() != "expose:")
        .skip(1)
        .take_while(|l| l.trim().starts_with("- "))
        .map(|l| scalar(l.trim().trim_start_matches("- ")))
        .collect();
    assert_eq!(exposed, [PORT], "compose.yaml: ingress `expose:`");
    // Only nginx is published on the host; the ingress (and its /metrics) is not.
    assert!(
        !ingress.iter().any(|l| l.trim() == "ports:"),
        "compose.yaml: the ingress must not publish ports on the host (nginx is the edge)"
    );
    assert!(
        ingress
            .iter()
            .any(|l| l.contains(r#""/usr/local/bin/ingress", "healthcheck""#)),
        "compose.yaml: the ingress's health check is `ingress healthcheck`"
    );
}

#[test]
fn containerfile_exposes_10000_only() {
    let containerfile = read("Containerfile");
    let exposed: Vec<&str> = containerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(exposed, [PORT], "Containerfile EXPOSE");
    assert!(
        containerfile
            .lines()
            .any(|l| l.trim() == "USER 10001:10001"),
        "Containerfile: the final stage runs as uid 10001"
    );
}

/// Every `server host:port` inside an `upstream { … }` of deploy/nginx's configuration.
fn nginx_upstream_servers() -> Vec<(String, String)> {
    let mut files = vec![repo().join("deploy/nginx/igsales.conf")];
    let dir = repo().join("deploy/nginx/igsales");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        files.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf")),
        );
    }
    let mut servers = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let mut in_upstream = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.starts_with("upstream ") {
                in_upstream = true;
            } else if in_upstream && line.starts_with('}') {
                in_upstream = false;
            } else if in_upstream && let Some(rest) = line.strip_prefix("server ") {
                let target = rest.split([' ', ';']).next().unwrap_or("");
                servers.push((
                    format!("{}: {line}", file.display()),
                    target.rsplit_once(':').map_or("", |(_, p)| p).to_owned(),
                ));
            }
        }
    }
    servers
}

#[test]
fn nginx_upstream_is_the_ingress_on_10000() {
    let servers = nginx_upstream_servers();
    assert!(
        !servers.is_empty(),
        "deploy/nginx: no `server host:port` in an upstream block"
    );
    for (where_, port) in &servers {
        assert_eq!(port, PORT, "{where_}");
    }
    // And compose mounts that configuration where igsales.conf includes it from.
    let nginx = compose_service("nginx").join("\n");
    for mount in [
        "./deploy/nginx/igsales.conf:/etc/nginx/conf.d/",
        "./deploy/nginx/igsales:/etc/nginx/igsales",
        "target: /etc/nginx/tls",
    ] {
        assert!(
            nginx.contains(mount),
            "compose.yaml nginx: no mount {mount:?}"
        );
    }
    for published in [":443\"", ":80\""] {
        assert!(
            nginx.contains(published),
            "compose.yaml nginx: port {published} not published"
        );
    }
}

#[test]
fn compose_stack_has_every_part_in_order() {
    for service in ["postgres", "redis", "migrate", "ingress", "worker", "nginx"] {
        assert!(
            !compose_service(service).is_empty(),
            "compose.yaml: no service {service}"
        );
    }
    let worker = compose_service("worker").join("\n");
    assert!(worker.contains("replicas: 2"), "worker: deploy.replicas");
    assert!(
        worker.contains(r#"["worker", "run"]"#),
        "worker: command worker run"
    );
    let migrate = compose_service("migrate").join("\n");
    assert!(migrate.contains(r#"["worker", "migrate"]"#));
    let redis = compose_service("redis").join("\n");
    for flag in [
        "--maxmemory-policy noeviction",
        "--appendonly yes",
        "--appendfsync everysec",
        "requirepass",
    ] {
        assert!(redis.contains(flag), "redis: {flag}");
    }
    let ingress = compose_service("ingress").join("\n");
    for dependency in ["migrate:", "redis:", "postgres:"] {
        assert!(
            ingress.contains(dependency),
            "ingress: depends_on {dependency}"
        );
    }
    assert!(
        ingress.contains("condition: service_completed_successfully"),
        "the app waits for migrate (which also sets up its login role)"
    );
    let compose = read("compose.yaml");
    assert!(compose.contains("init: true"));
}

/// The names a service's `environment:` list passes (`- NAME` or `- NAME=value`).
fn compose_environment(service: &str) -> BTreeSet<String> {
    let block = compose_service(service);
    let Some(start) = block
        .iter()
        .position(|l| l.trim_end() == "    environment:")
    else {
        return BTreeSet::new();
    };
    block[start + 1..]
        .iter()
        .take_while(|l| l.starts_with("      - "))
        .map(|l| {
            let item = l.trim_start_matches("      - ").trim();
            item.split('=').next().unwrap_or(item).to_owned()
        })
        .collect()
}

/// The variables one command reads: the top-level ones and those of `path`'s subcommands.
fn variables_of(cmd: &clap::Command, path: &[&str]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if let Some((first, rest)) = path.split_first() {
        let sub = cmd
            .find_subcommand(first)
            .unwrap_or_else(|| panic!("no subcommand {first}"));
        out.extend(variables_of(sub, rest));
    }
    out
}

/// Least privilege: each service receives exactly what it reads, never the whole env file. The
/// owner's URL reaches only `migrate` (and the Postgres server, which creates that role at first
/// start); the data stores get none of the app's secrets.
#[test]
fn each_compose_service_gets_only_the_variables_it_reads() {
    use clap::CommandFactory as _;
    let compose = read("compose.yaml");
    assert!(
        !compose.contains("env_file"),
        "no service gets the whole env file"
    );
    let worker = igsales_worker::cli::Cli::command();
    let ingress = igsales_ingress::IngressArgs::command();
    for (service, reads) in [
        ("ingress", variables_of(&ingress, &[])),
        ("worker", variables_of(&worker, &["run"])),
        ("migrate", variables_of(&worker, &["migrate"])),
    ] {
        assert_eq!(
            compose_environment(service),
            reads,
            "compose.yaml: {service}'s environment must be exactly what it reads"
        );
    }
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        compose_environment("postgres"),
        set(&["MIGRATION_DATABASE_URL"])
    );
    for service in ["redis", "redis-replica", "redis-sentinel-1"] {
        assert_eq!(
            compose_environment(service),
            set(&["REDIS_URL"]),
            "{service}"
        );
    }
    assert!(compose_environment("nginx").is_empty());
    for service in ["ingress", "worker"] {
        assert!(
            !compose_environment(service).contains("MIGRATION_DATABASE_URL"),
            "{service} must not hold the owner's URL"
        );
    }
    assert!(!compose_environment("ingress").contains("OPENAI_API_KEY"));
    for secret in [
        "IG_APP_SECRET",
        "ADMIN_API_TOKEN",
        "META_WEBHOOK_VERIFY_TOKEN",
    ] {
        assert!(
            !compose_environment("worker").contains(secret),
            "the worker does not need {secret}"
        );
    }
    for service in ["migrate", "postgres", "redis"] {
        for secret in [
            "ENCRYPTION_KEY",
            "OPENAI_API_KEY",
            "IG_APP_SECRET",
            "ADMIN_API_TOKEN",
        ] {
            assert!(
                !compose_environment(service).contains(secret),
                "{service} must not receive {secret}"
            );
        }
    }
}

/// compose.yaml reads the Postgres and Redis passwords back out of these URLs, and reaches the
/// services by their compose names.
#[test]
fn env_example_urls_point_at_the_compose_services() {
    for (name, scheme, host) in [
        ("DATABASE_URL", "postgres://", "postgres:5432"),
        ("MIGRATION_DATABASE_URL", "postgres://", "postgres:5432"),
        ("REDIS_URL", "redis://", "redis:6379"),
    ] {
        let value = env_value(name);
        let rest = value
            .strip_prefix(scheme)
            .unwrap_or_else(|| panic!("{name} does not start with {scheme}"));
        let (userinfo, after) = rest
            .split_once('@')
            .unwrap_or_else(|| panic!("{name} has no user:password@"));
        assert!(
            userinfo.contains(':') && !userinfo.ends_with(':'),
            "{name} has no password"
        );
        assert!(
            after.starts_with(&format!("{host}/")),
            "{name} must reach {host} (the compose service)"
        );
    }
    let db = |name: &str| env_value(name).rsplit('/').next().map(str::to_owned);
    assert_eq!(
        db("DATABASE_URL"),
        db("MIGRATION_DATABASE_URL"),
        "one database"
    );
    let user = |name: &str| {
        let v = env_value(name);
        v.split("://")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .map(str::to_owned)
    };
    assert_ne!(
        user("DATABASE_URL"),
        user("MIGRATION_DATABASE_URL"),
        "the app's login role is not the owner"
    );
}

fn spec_section_3(spec: &str) -> Vec<String> {
    let section: String = spec
        .lines()
        .skip_while(|l| !l.starts_with("## 3."))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split('|').nth(1).unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn spec_variables_are_the_ones_listed_here() {
    let path = repo().join("../shared/SPEC.md");
    let Ok(spec) = std::fs::read_to_string(&path) else {
        eprintln!(
            "{} not found: checked against the list in this file only",
            path.display()
        );
        return;
    };
    let in_spec: BTreeSet<String> = spec_section_3(&spec).into_iter().collect();
    let here: BTreeSet<String> = SPEC_VARIABLES.iter().map(|s| s.to_string()).collect();
    assert!(
        in_spec.len() > 30,
        "SPEC §3 table not found in {}",
        path.display()
    );
    assert_eq!(
        in_spec.difference(&here).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "SPEC §3 lists variables that SPEC_VARIABLES lacks"
    );
}

#[test]
fn env_example_has_every_spec_variable() {
    let names: BTreeSet<String> = env_example().into_iter().map(|(_, n, _)| n).collect();
    let missing: Vec<&&str> = SPEC_VARIABLES
        .iter()
        .filter(|v| !names.contains(**v))
        .collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
}

/// Every variable the binaries' command trees read (each subcommand's groups).
fn variables_read_by_the_binaries() -> BTreeSet<String> {
    use clap::CommandFactory as _;
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(var) = arg.get_env() {
                out.insert(var.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&igsales_worker::cli::Cli::command(), &mut out);
    walk(&igsales_ingress::IngressArgs::command(), &mut out);
    out
}

/// Each `NAME => field: …` line of a config group in the app's crates, per variable.
fn group_declarations() -> BTreeMap<String, Vec<String>> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, Vec<String>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                // A file's unit tests declare groups of their own.
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for line in code.lines() {
                    let Some((name, _)) = line.trim_start().split_once(" => ") else {
                        continue;
                    };
                    let is_var = name.len() > 1
                        && name.starts_with(|c: char| c.is_ascii_uppercase())
                        && name
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                    if is_var {
                        out.entry(name.to_owned())
                            .or_default()
                            .push(path.display().to_string());
                    }
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for krate in APP_CRATES {
        walk(&repo().join(krate).join("src"), &mut out);
    }
    out
}

#[test]
fn each_variable_is_declared_once_in_one_group() {
    let declared = group_declarations();
    let twice: Vec<_> = declared.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(twice.is_empty(), "declared more than once: {twice:?}");
    // Every variable a binary reads comes from a group declaration, and no group is unused.
    let names: BTreeSet<String> = declared.into_keys().collect();
    assert_eq!(names, variables_read_by_the_binaries());
    // No variable is read outside the groups (`env = "…"` on a hand-written field).
    for krate in ["config", "ingress", "worker"] {
        let mut stack = vec![repo().join(krate).join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src").filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    assert!(
                        !text.contains("env = \""),
                        "{} declares a variable outside a config group",
                        path.display()
                    );
                }
            }
        }
    }
}

#[test]
fn env_example_lists_exactly_what_the_binaries_read() {
    let read_by_code = variables_read_by_the_binaries();
    assert!(read_by_code.len() > 30, "found only {read_by_code:?}");
    let listed: BTreeSet<String> = env_example().into_iter().map(|(_, n, _)| n).collect();
    let unlisted: Vec<&String> = read_by_code.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "read by the binaries but not in .env.example: {unlisted:?}"
    );
    let stale: Vec<&String> = listed.difference(&read_by_code).collect();
    assert!(
        stale.is_empty(),
        "in .env.example but read by no binary: {stale:?}"
    );
}

// --- Secrets ---------------------------------------------------------------------------------

/// Words that make a value an obvious placeholder.
const PLACEHOLDER_MARKS: &[&str] = &["replace", "change-me", "changeme", "placeholder", "example"];

fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    PLACEHOLDER_MARKS.iter().any(|m| lower.contains(m))
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Why `value` (of variable `name`) looks like a real secret, if it does.
fn secret_smell(name: &str, value: &str) -> Option<String> {
    // Well-known token shapes: OpenAI keys, Meta/Instagram access tokens.
    for token in value.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        if token.starts_with("sk-") && token.len() >= 20 {
            return Some("an OpenAI-style key (sk-…)".into());
        }
        if (token.starts_with("EAA") || token.starts_with("IGAA")) && token.len() >= 20 {
            return Some("a Meta/Instagram access token (EAA…/IGAA…)".into());
        }
    }
    // Long random-looking runs: hex or base64 of ≥ 16 bytes, not a placeholder word.
    for run in
        value.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
    {
        let run = run.trim_end_matches('=');
        let digits = run.chars().filter(char::is_ascii_digit).count();
        let letters = run.chars().filter(char::is_ascii_alphabetic).count();
        if run.len() >= 20 && digits > 0 && letters > 0 && entropy(run) > 3.0 {
            return Some(format!(
                "a random-looking string of {} characters",
                run.len()
            ));
        }
    }
    // The password inside a URL must be a placeholder.
    if let Some((_, rest)) = value.split_once("://")
        && let Some((userinfo, _)) = rest.split_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
        && !password.is_empty()
        && !is_placeholder(password)
    {
        return Some("a password in a URL that is not a placeholder".into());
    }
    // A secret-named variable is empty or a placeholder.
    let secret_name = ["_SECRET", "_TOKEN", "_PASSWORD", "_KEY"]
        .iter()
        .any(|w| name.ends_with(w));
    if secret_name && !value.is_empty() && !is_placeholder(value) {
        return Some("a secret variable whose value is not an obvious placeholder".into());
    }
    None
}

#[test]
fn env_example_holds_no_real_looking_secret() {
    let smells: Vec<String> = env_example()
        .into_iter()
        .filter_map(|(line, name, value)| {
            secret_smell(&name, &value).map(|why| format!(".env.example:{line}: {name}: {why}"))
        })
        .collect();
    assert!(smells.is_empty(), "{smells:#?}");
}

#[test]
fn the_secret_scan_catches_real_looking_values() {
    // Shapes of real secrets (made up here, never used anywhere).
    let real = [
        ("OPENAI_API_KEY", "sk-proj-4f9Qm2Lx8Tz1Vb7Nc3Rw6Yh0Kd5Sa"),
        ("IG_APP_SECRET", "0f3a9c1be27d48e6a5b0c9d8e7f61234"),
        (
            "ENCRYPTION_KEY",
            "1:q8Xv2mJ4kR9tL0wZ7nB3cF6hY1sD5gA8eU2iO4pQ7rM=",
        ),
        ("META_APP_SECRET", "EAAGm0PX4ZCpsBAKZCqZBv7ZB"),
        ("X_ACCESS", "IGAAR9fk2Lm3Np4Qr5St6Uv7Wx8"),
        (
            "DATABASE_URL",
            "postgres://igsales_login:Hunter2@postgres:5432/igsales",
        ),
        ("ADMIN_API_TOKEN", "correct horse battery staple"),
    ];
    for (name, value) in real {
        assert!(
            secret_smell(name, value).is_some(),
            "{name}={value} passed the scan"
        );
    }
    let placeholders = [
        ("IG_APP_SECRET", "replace-with-the-instagram-app-secret"),
        (
            "ENCRYPTION_KEY",
            "1:REPLACE_WITH_BASE64_OF_32_RANDOM_BYTES_AAAAAA=",
        ),
        (
            "DATABASE_URL",
            "postgres://igsales_login:replace-me@postgres:5432/igsales",
        ),
        ("META_APP_SECRET", ""),
        ("META_APP_ID", "000000000000000"),
        (
            "OAUTH_SUCCESS_REDIRECT_URL",
            "https://dashboard.example.com/instagram/connected",
        ),
        ("TOKEN_REFRESH_CRON", "0 0 * * * *"),
    ];
    for (name, value) in placeholders {
        assert_eq!(secret_smell(name, value), None, "{name}={value}");
    }
}

#[test]
fn env_example_cors_allows_only_a_placeholder_origin() {
    for origin in env_value("CORS_ALLOWED_ORIGINS").split(',') {
        let host = origin
            .trim()
            .split("://")
            .nth(1)
            .unwrap_or_else(|| panic!("CORS origin {origin:?} is not an absolute origin"));
        assert!(
            host == "example.com" || host.ends_with(".example.com"),
            "CORS_ALLOWED_ORIGINS must name placeholder origins only, not {origin:?}"
        );
    }
}

#[test]
fn the_worker_runtime_knows_nothing_of_the_handlers_the_sales_logic_or_the_cli() {
    let dir = repo().join("worker/src/runtime");
    let mut read = 0;
    for entry in std::fs::read_dir(&dir)
        .expect("runtime/")
        .filter_map(Result::ok)
    {
        let path = entry.path();
        let text = std::fs::read_to_string(&path).expect("read");
        read += 1;
        for room in ["crate::handlers", "crate::sales", "crate::cli"] {
            assert!(
                !text.contains(room),
                "{} reaches into {room}: the runtime is generic over its context",
                path.display()
            );
        }
    }
    assert!(read >= 5, "found only {read} files in {}", dir.display());
}
