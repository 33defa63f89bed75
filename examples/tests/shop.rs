//! The `shop` service (`src/shop.rs`) as a real process on loopback, driven over HTTP
//! as clients would drive it.
//!
//! - `sigkilled_shop_charges_each_order_once_*`: 100 orders, each POSTed twice at once
//!   under its idempotency key (30 wait for an approval), while the service is
//!   SIGKILLed at 12 random moments and started again on the same journal. The clients
//!   retry what fails, as real ones do. In the end every order completed, once (one
//!   workflow per key in the journal), the payment gateway's side log holds one charge
//!   per order (and none for anything else), and every answer for a key agrees: the
//!   same id, and one result. On SQLite, and on PostgreSQL (the server `DATABASE_URL`
//!   names, or one started for the test: a server younger than the runtime's lease
//!   does not trust its freed locks, so there the orders of a killed process are
//!   taken over a lease after the kills, not at the next start; the test takes about
//!   10 s longer). The seed is printed; `SHOP_SEED=` repeats its kill moments and
//!   approval times. `SHOP_KEEP=1` keeps the journal and the service's logs.
//! - `sigterm_drains_and_no_step_runs_twice`: SIGTERM while step bodies run and a
//!   request is half sent: the service answers 503 to `/healthz` at once, ends a long
//!   poll, then refuses new connections while it answers the request in flight, lets
//!   the bodies finish and exits 0; the next start finishes every order, and no step
//!   body ran again after its result was recorded.
//! - `the_api_answers_mistakes_in_json` and `the_workflow_names_are_unique`.

mod common;
mod shop_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Rng;
use durable_runtime::{Client, RecordedStatus};
use serde_json::Value;
use shop_support::{Reply, Shop, SlowRequest, request};

const ORDERS: usize = 100;
const KILLS: usize = 12;
/// How long the test waits for anything before it gives up (a hang guard).
const PATIENCE: Duration = Duration::from_secs(120);

/// Order `i`'s body, its total, and whether it waits for an approval (30 in 100).
fn order(i: usize) -> (String, u64, bool) {
    if i % 10 < 3 {
        // Two desks and some mugs: over $1,000.
        let mugs = (i % 3 + 1) as u64;
        let body = format!(
            r#"{{"email":"buyer{i}@example.com","items":[{{"sku":"desk","qty":2}},{{"sku":"mug","qty":{mugs}}}]}}"#
        );
        (body, 2 * 64_900 + mugs * 1_200, true)
    } else {
        let mugs = (i % 4 + 1) as u64;
        let lamp = i % 2 == 1;
        let mut items = format!(r#"{{"sku":"mug","qty":{mugs}}},{{"sku":"tee","qty":1}}"#);
        if lamp {
            items.push_str(r#",{"sku":"lamp","qty":1}"#);
        }
        let body = format!(r#"{{"email":"buyer{i}@example.com","items":[{items}]}}"#);
        (
            body,
            mugs * 1_200 + 2_500 + if lamp { 8_900 } else { 0 },
            false,
        )
    }
}

fn seed() -> u64 {
    let seed = match std::env::var("SHOP_SEED") {
        Ok(s) => s.parse().expect("SHOP_SEED is a number"),
        Err(_) => {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
                % 1_000_000_007
        }
    };
    println!("SHOP_SEED={seed}");
    seed
}

/// A client that keeps trying, as a real one would: a refused or reset connection (the
/// server was killed, or is starting again) or a 503 is tried again after a short
/// pause, on whatever port the server listens on now.
fn call(
    port: &AtomicU16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match request(port.load(Ordering::SeqCst), method, path, headers, body) {
            Ok(reply) if reply.status != 503 => return reply,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path}: no answer in {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Approves order `key` until the service says it is approved or past approval.
fn approve(port: &AtomicU16, key: &str) {
    let path = format!("/orders/{key}/approve");
    loop {
        let reply = call(port, "POST", &path, &[], Some(r#"{"by":"tester"}"#));
        match reply.status {
            202 => return,
            // Not priced yet: the service says when to try again.
            409 if reply.header("retry-after").is_some() => {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Finished: a retry of an approval that went through before a kill.
            409 if reply.body.contains("has finished") => return,
            _ => panic!("approve {key}: {reply:?}"),
        }
    }
}

/// Polls `GET /orders/{key}` until the order has finished; every answer goes to `seen`.
fn await_finished(port: &AtomicU16, key: &str, seen: &Mutex<Vec<(String, Reply)>>) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = call(
            port,
            "GET",
            &format!("/orders/{key}?wait_ms=2000"),
            &[],
            None,
        );
        assert_eq!(reply.status, 200, "GET {key}: {reply:?}");
        let view = reply.json();
        seen.lock().expect("seen").push((key.to_owned(), reply));
        if matches!(
            view["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "order {key} did not finish: {view}"
        );
    }
}

fn sigkilled_shop_charges_each_order_once(journal: &str, dir: &Path, seed: u64) {
    let mut rng = Rng(seed);
    let started = Instant::now();
    let side_log = dir.join("side.log");
    let side = side_log.to_str().expect("a UTF-8 path");
    // Steps of 150 ms (an order takes a second or more), and approvals that come at
    // random times over the first 4 seconds: kills find orders at every stage.
    let args = [
        "--side-log",
        side,
        "--step-delay-ms",
        "150",
        "--grace-ms",
        "2000",
    ];
    let keys: Vec<String> = (0..ORDERS).map(|i| format!("ord-{seed}-{i}")).collect();

    let mut shop = Shop::start(journal, dir, &args);
    let port = Arc::new(AtomicU16::new(shop.port));
    let seen: Arc<Mutex<Vec<(String, Reply)>>> = Arc::default();

    // 200 clients at once: each order twice, under one key.
    let barrier = Arc::new(Barrier::new(2 * ORDERS));
    let clients: Vec<_> = (0..2 * ORDERS)
        .map(|n| {
            let (i, first) = (n / 2, n % 2 == 0);
            let (body, _, needs_approval) = order(i);
            let approve_after = rng.up_to(Duration::from_secs(4));
            let key = keys[i].clone();
            let (port, seen, barrier) = (port.clone(), seen.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let reply = call(
                    &port,
                    "POST",
                    "/orders",
                    &[("Idempotency-Key", &key)],
                    Some(&body),
                );
                assert!(
                    reply.status == 200 || reply.status == 202,
                    "POST {key}: {reply:?}"
                );
                seen.lock().expect("seen").push((key.clone(), reply));
                if needs_approval && first {
                    std::thread::sleep(approve_after);
                    approve(&port, &key);
                }
            })
        })
        .collect();

    // Kill the service at random moments, and start it again on the same journal.
    let (mut pending, mut resumed) = (Vec::new(), Vec::new());
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(30) + rng.up_to(Duration::from_millis(400)));
        // How many orders the kill interrupts (in the journal, not finished).
        let health = request(shop.port, "GET", "/healthz", &[], None);
        pending.push(health.ok().and_then(|h| h.json()["pending"].as_u64()));
        shop.kill();
        shop = Shop::start(journal, dir, &args);
        port.store(shop.port, Ordering::SeqCst);
        resumed.push(resumed_orders(&shop.log_text()));
    }
    println!("orders pending at each kill: {pending:?}");
    println!("orders each restart resumed at its open: {resumed:?}");
    assert!(
        pending.iter().any(|&n| n.is_some_and(|n| n > 0)),
        "no kill interrupted an order: the test tests nothing"
    );
    for client in clients {
        client.join().expect("a client failed");
    }
    let finals: BTreeMap<String, Value> = keys
        .iter()
        .map(|key| (key.clone(), await_finished(&port, key, &seen)))
        .collect();
    println!(
        "{ORDERS} orders, {KILLS} kills: every order finished after {} ms",
        started.elapsed().as_millis()
    );

    // A graceful stop after all that: exits 0, the journal is released.
    shop.terminate();
    let status = shop
        .wait_exit(PATIENCE)
        .expect("the shop did not exit after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        shop.log_text()
    );

    // Every order completed, with the receipt its request asks for.
    for (i, key) in keys.iter().enumerate() {
        let view = &finals[key];
        let (_, total, needs_approval) = order(i);
        assert_eq!(view["status"], "completed", "{key}: {view}");
        let receipt = &view["result"];
        assert_eq!(receipt["order_id"], key.as_str(), "{view}");
        assert_eq!(receipt["total_cents"], total, "{view}");
        let approver = if needs_approval {
            Value::from("tester")
        } else {
            Value::Null
        };
        assert_eq!(receipt["approved_by"], approver, "{view}");
    }

    // Every answer for a key agrees: the same id; a completed one, the same result.
    for (key, reply) in seen.lock().expect("seen").iter() {
        let view = reply.json();
        assert_eq!(view["id"], key.as_str(), "an answer for {key}: {reply:?}");
        if view["status"] == "completed" {
            assert_eq!(view["result"], finals[key]["result"], "an answer for {key}");
        }
    }

    // One charge per order at the gateway, none for anything else; and the charge id
    // each receipt names is the charge the gateway made (by its idempotency key).
    let text = std::fs::read_to_string(&side_log).expect("the side log");
    let mut charges: BTreeMap<&str, Vec<(usize, &str, u64)>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "side log line {line:?}");
        let cents = fields[2].parse().expect("cents");
        charges
            .entry(fields[1])
            .or_default()
            .push((n + 1, fields[0], cents));
    }
    let expected: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let charged: BTreeSet<&str> = charges.keys().copied().collect();
    assert_eq!(charged, expected, "the orders charged are the orders sent");
    let twice: Vec<_> = charges.iter().filter(|(_, made)| made.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} orders were charged more than once: {twice:?}",
        twice.len()
    );
    for (i, key) in keys.iter().enumerate() {
        let made = &charges[key.as_str()];
        let (_line, idempotency_key, cents) = made[0];
        assert!(idempotency_key.starts_with(&format!("{key}/")), "{made:?}");
        assert_eq!(cents, order(i).1, "order {key}'s charge");
        assert_eq!(
            finals[key]["result"]["charge_id"],
            format!("ch_{}", idempotency_key.replace('/', "-")),
            "order {key}'s receipt names its charge"
        );
    }

    // One workflow per key in the journal.
    let client = Client::open(journal).expect("read the journal");
    let counts: BTreeMap<&str, u64> = client
        .counts()
        .expect("counts")
        .into_iter()
        .map(|(status, n)| (status.as_str(), n))
        .collect();
    assert_eq!(
        counts.get(RecordedStatus::Completed.as_str()),
        Some(&(ORDERS as u64)),
        "{counts:?}"
    );
    assert_eq!(counts.values().sum::<u64>(), ORDERS as u64, "{counts:?}");
    println!("checked in {} ms", started.elapsed().as_millis());
}

/// A directory for a test's journal and logs; kept (and named) with `SHOP_KEEP=1`.
fn workdir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("shop-test-")
        .tempdir()
        .expect("tempdir");
    if std::env::var_os("SHOP_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("SHOP_KEEP: the logs stay in {}", dir.path().display());
    }
    dir
}

/// How many pending orders a shop resumed at its start (its log says so).
fn resumed_orders(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("resuming pending orders"))
        .filter_map(|l| {
            l.split("orders=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

#[test]
fn sigkilled_shop_charges_each_order_once_sqlite() {
    let dir = workdir();
    let journal = dir.path().join("shop.db");
    sigkilled_shop_charges_each_order_once(journal.to_str().expect("UTF-8"), dir.path(), seed());
}

#[test]
fn sigkilled_shop_charges_each_order_once_postgres() {
    let server = durable_testkit::postgres::database_url();
    let seed = seed();
    let schema = format!("shop_test_{}_{}", std::process::id(), seed % 1_000_000);
    let sep = if server.contains('?') { '&' } else { '?' };
    let journal = format!("{server}{sep}schema={schema}");
    let dir = workdir();
    sigkilled_shop_charges_each_order_once(&journal, dir.path(), seed);
    drop_schema(&server, &schema);
}

fn drop_schema(server: &str, schema: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .expect("drop the schema");
    });
}

/// The body log: per `(order, path, attempt)`, how many times the body started and
/// ended, and per `(order, path)` how many attempts ended `ok`.
#[derive(Debug, Default)]
struct Bodies {
    starts: BTreeMap<(String, String, String), usize>,
    ends: BTreeMap<(String, String, String), usize>,
    oks: BTreeMap<(String, String), usize>,
}

fn bodies(path: &Path) -> Bodies {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut b = Bodies::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let at = (f[0].to_owned(), f[1].to_owned(), f[3].to_owned());
        match f[4] {
            "start" => *b.starts.entry(at).or_default() += 1,
            "end" => {
                *b.ends.entry(at).or_default() += 1;
                if f.get(5) == Some(&"ok") {
                    *b.oks.entry((f[0].to_owned(), f[1].to_owned())).or_default() += 1;
                }
            }
            _ => panic!("body log line {line:?}"),
        }
    }
    b
}

impl Bodies {
    /// Bodies that started and have not ended.
    fn open(&self) -> Vec<&(String, String, String)> {
        self.starts
            .iter()
            .filter(|(at, n)| self.ends.get(*at).copied().unwrap_or(0) < **n)
            .map(|(at, _)| at)
            .collect()
    }
}

#[test]
fn sigterm_drains_and_no_step_runs_twice() {
    let dir = workdir();
    let journal = dir.path().join("shop.db");
    let journal = journal.to_str().expect("UTF-8");
    let body_log = dir.path().join("body.log");
    let body = body_log.to_str().expect("UTF-8");
    // Slow steps, so SIGTERM finds bodies running; a drain delay, to see the 503.
    let mut shop = Shop::start(
        journal,
        dir.path(),
        &[
            "--step-delay-ms",
            "300",
            "--drain-delay-ms",
            "400",
            "--grace-ms",
            "5000",
            "--body-log",
            body,
        ],
    );
    let port = shop.port;
    let keys: Vec<String> = (0..8).map(|i| format!("term-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let reply = request(
            port,
            "POST",
            "/orders",
            &[("Idempotency-Key", key)],
            Some(&order(i).0),
        )
        .expect("POST");
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    let deadline = Instant::now() + PATIENCE;
    // Past pricing, with bodies running: reservations, charges; and term-0 waits for
    // its approval.
    while bodies(&body_log)
        .open()
        .iter()
        .all(|(_, path, _)| path == "1")
    {
        assert!(Instant::now() < deadline, "no step body started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let term_0 = request(port, "GET", "/orders/term-0", &[], None).expect("GET");
    assert_eq!(term_0.json()["status"], "waiting_approval", "{term_0:?}");
    // A long poll on it: the shutdown must end it while the runtime still runs (so it
    // says `waiting_approval`), not hold the drain up until the runtime closes.
    let poll = std::thread::spawn(move || {
        let reply = request(port, "GET", "/orders/term-0?wait_ms=30000", &[], None);
        (reply, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(50));
    let running = bodies(&body_log).open().len();

    // A request in flight through the shutdown: half its body sent.
    let slow_body = order(5).0;
    let slow = SlowRequest::start(
        port,
        "/orders",
        &[("Idempotency-Key", "term-slow")],
        &slow_body,
        slow_body.len() / 2,
    )
    .expect("start a slow request");
    std::thread::sleep(Duration::from_millis(50));

    let sent = Instant::now();
    shop.terminate();
    // The drain: `/healthz` answers 503 at once; after the drain delay new connections
    // are refused, while the request in flight is still served.
    let (mut saw_503, mut saw_refused, mut ready_again) = (false, false, false);
    while !saw_refused && sent.elapsed() < Duration::from_secs(10) {
        match request(port, "GET", "/healthz", &[], None) {
            Ok(r) if r.status == 503 => saw_503 = true,
            Ok(r) if r.status == 200 => ready_again |= saw_503,
            Ok(r) => panic!("/healthz: {r:?}"),
            // Refused while the process runs: not because it has exited.
            Err(_) => saw_refused = shop.try_wait().is_none(),
        }
        if shop.try_wait().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(saw_503, "/healthz never answered 503 during the drain");
    assert!(
        saw_refused,
        "new connections were still accepted during the drain"
    );
    let slow = slow.finish().expect("the request in flight was answered");
    assert_eq!(slow.status, 202, "the request in flight: {slow:?}");
    let status = shop
        .wait_exit(PATIENCE)
        .expect("the shop did not exit after SIGTERM");
    let took = sent.elapsed();
    println!(
        "SIGTERM with {running} step bodies running: exited ({status}) after {} ms",
        took.as_millis()
    );
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        shop.log_text()
    );
    assert!(
        took < Duration::from_secs(15),
        "the drain took {took:?}, past its grace"
    );
    assert!(
        !ready_again,
        "/healthz answered 200 again after the drain began"
    );

    let (reply, returned) = poll.join().expect("the long poll");
    let reply = reply.expect("the long poll got an answer");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["status"], "waiting_approval", "{reply:?}");
    assert!(
        returned < sent + Duration::from_secs(3),
        "the long poll held the shutdown up for {:?}",
        returned - sent
    );

    // Every body that started finished: the drain cut none off.
    let before = bodies(&body_log);
    assert!(
        before.open().is_empty(),
        "bodies cut off by the shutdown: {:?}",
        before.open()
    );

    // The next start finishes every order (the first 3 after their approval).
    let shop = Shop::start(
        journal,
        dir.path(),
        &["--step-delay-ms", "20", "--body-log", body],
    );
    let port = AtomicU16::new(shop.port);
    for key in &keys[..3] {
        approve(&port, key);
    }
    let seen = Mutex::default();
    for key in keys.iter().map(String::as_str).chain(["term-slow"]) {
        let view = await_finished(&port, key, &seen);
        assert_eq!(view["status"], "completed", "{view}");
    }

    // No step body ran again once its result was recorded: each (order, path) ended
    // `ok` once. (An attempt that failed and was waiting to be retried when the
    // service stopped is not recorded: the next start runs the step from its first
    // attempt again, which is right.)
    let after = bodies(&body_log);
    let steps: usize = after.oks.len();
    assert!(
        steps >= keys.len() * 6,
        "{steps} steps succeeded: {after:?}"
    );
    for (at, n) in &after.oks {
        assert_eq!(*n, 1, "the body of step {at:?} succeeded {n} times");
    }
    assert!(after.open().is_empty(), "{:?}", after.open());
}

#[test]
fn the_api_answers_mistakes_in_json() {
    let dir = workdir();
    let journal = dir.path().join("shop.db");
    let shop = Shop::start(
        journal.to_str().expect("UTF-8"),
        dir.path(),
        &["--step-delay-ms", "1"],
    );
    let port = shop.port;
    let post = |key: Option<&str>, body: &str| {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        request(port, "POST", "/orders", &headers, Some(body)).expect("POST")
    };
    let error_of = |reply: &Reply, status: u16, words: &str| {
        assert_eq!(reply.status, status, "{reply:?}");
        let message = reply.json()["error"].as_str().map(str::to_owned);
        assert!(
            message.as_deref().is_some_and(|m| m.contains(words)),
            "expected an error saying {words:?}: {reply:?}"
        );
    };
    let (mugs, _, _) = order(5);

    error_of(&post(None, &mugs), 400, "Idempotency-Key");
    error_of(&post(Some("a b"), &mugs), 400, "Idempotency-Key");
    error_of(&post(Some("k1"), "{\"email\":"), 400, "not an order");
    error_of(
        &post(Some("k1"), r#"{"email":"a@b.c","items":[],"x":1}"#),
        400,
        "unknown field",
    );
    error_of(
        &post(
            Some("k1"),
            r#"{"email":"a@b.c","items":[{"sku":"pen","qty":1}]}"#,
        ),
        422,
        "does not sell",
    );
    error_of(
        &post(
            Some("k1"),
            r#"{"email":"a@b.c","items":[{"sku":"mug","qty":0}]}"#,
        ),
        422,
        "quantity",
    );
    error_of(
        &post(
            Some("k1"),
            r#"{"email":"nobody","items":[{"sku":"mug","qty":1}]}"#,
        ),
        422,
        "email",
    );
    // What the caller sent is quoted short, never echoed whole.
    let long = format!(
        r#"{{"email":"{}","items":[{{"sku":"{}","qty":1}}]}}"#,
        "x".repeat(10_000),
        "y".repeat(10_000)
    );
    let reply = post(Some("k1"), &long);
    error_of(&reply, 422, "at most 254 bytes");
    assert!(reply.body.len() < 500, "{reply:?}");
    let long_sku = format!(
        r#"{{"email":"a@b.c","items":[{{"sku":"{}","qty":1}}]}}"#,
        "y".repeat(10_000)
    );
    let reply = post(Some("k1"), &long_sku);
    error_of(&reply, 422, "does not sell");
    assert!(reply.body.len() < 500, "{reply:?}");
    let reply = post(
        Some("k1"),
        &format!(r#"{{"email":{}}}"#, "7".repeat(10_000)),
    );
    error_of(&reply, 400, "not an order");
    assert!(reply.body.len() < 800, "{reply:?}");
    // A body over the limit: a JSON error too.
    error_of(
        &post(Some("k1"), &" ".repeat(100 * 1024)),
        413,
        "at most 64 KiB",
    );

    // The same key: the same order, however often; another order under it: refused.
    let first = post(Some("k1"), &mugs);
    assert!(first.status == 200 || first.status == 202, "{first:?}");
    assert_eq!(first.json()["id"], "k1");
    let done = request(port, "GET", "/orders/k1?wait_ms=10000", &[], None).expect("GET");
    assert_eq!(done.json()["status"], "completed", "{done:?}");
    let again = post(Some("k1"), &mugs);
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["result"], done.json()["result"]);
    error_of(
        &post(Some("k1"), &order(6).0),
        422,
        "was used for another order",
    );
    let steps = done.json()["steps"].as_array().expect("steps").len();
    assert!(steps >= 6, "{done:?}");

    error_of(
        &request(port, "GET", "/orders/nope", &[], None).expect("GET"),
        404,
        "no order nope",
    );
    error_of(
        &request(port, "GET", "/nowhere", &[], None).expect("GET"),
        404,
        "no route",
    );
    error_of(
        &request(port, "DELETE", "/orders/k1", &[], None).expect("DELETE"),
        405,
        "does not take DELETE",
    );
    let approve_with = |id: &str, body: &str| {
        request(
            port,
            "POST",
            &format!("/orders/{id}/approve"),
            &[],
            Some(body),
        )
        .expect("approve")
    };
    error_of(&approve_with("nope", r#"{"by":"x"}"#), 404, "no order nope");
    error_of(&approve_with("k1", r#"{"by":"x"}"#), 409, "has finished");
    error_of(&approve_with("k1", "{}"), 400, "not an approval");
    let reply = approve_with("k1", &format!(r#"{{"by":"x","{}":1}}"#, "n".repeat(10_000)));
    error_of(&reply, 400, "not an approval");
    assert!(reply.body.len() < 500, "{reply:?}");
    error_of(
        &approve_with("k1", &" ".repeat(100 * 1024)),
        413,
        "at most 64 KiB",
    );
    error_of(
        &request(port, "GET", "/orders/k1?wait_ms=soon", &[], None).expect("GET"),
        400,
        "wait_ms",
    );

    // An order that needs an approval waits for it, and a second approval changes nothing.
    let big = post(Some("k2"), &order(0).0);
    assert_eq!(big.status, 202, "{big:?}");
    let waiting = request(port, "GET", "/orders/k2?wait_ms=500", &[], None).expect("GET");
    assert_eq!(waiting.json()["status"], "waiting_approval", "{waiting:?}");
    let small = post(Some("k3"), &mugs);
    assert!(small.status == 200 || small.status == 202, "{small:?}");
    let _ = request(port, "GET", "/orders/k3?wait_ms=10000", &[], None).expect("GET");
    let port_now = AtomicU16::new(port);
    approve(&port_now, "k2");
    approve(&port_now, "k2");
    let k2 = request(port, "GET", "/orders/k2?wait_ms=10000", &[], None).expect("GET");
    assert_eq!(k2.json()["result"]["approved_by"], "tester", "{k2:?}");

    let health = request(port, "GET", "/healthz", &[], None).expect("GET");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["ready"], true);
    assert_eq!(health.json()["pending"], 0, "{health:?}");
}

#[test]
fn the_workflow_names_are_unique() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .arg("--check")
        .output()
        .expect("run shop --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("shop_checkout"), "{stdout}");
}
