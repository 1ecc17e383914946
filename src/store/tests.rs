//! One suite of cases for both backends (the local files, and PostgreSQL on the machine's
//! server, `WEIR_PG_PORT` or 5432, in a database of its own), and the cases only files
//! have: a torn or damaged journal, a disk that refuses writes, the snapshot folding, an
//! earlier weir's files.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::local::{JOURNAL, Local, SNAPSHOT};
use super::postgres::Postgres;
use super::*;

/// A backend under test, opened again as after a restart by `reopen`.
#[allow(async_fn_in_trait)]
trait Harness {
    async fn open(&self) -> Store;
}

struct Files(tempfile::TempDir);

impl Harness for Files {
    async fn open(&self) -> Store {
        Store::new(Arc::new(Local::open(self.0.path()).unwrap()))
    }
}

/// A database of its own on the machine's PostgreSQL, dropped at the end.
pub(crate) struct Database {
    pub(crate) name: String,
    stop: CancellationToken,
}

pub(crate) fn server() -> String {
    let port = std::env::var("WEIR_PG_PORT").unwrap_or_else(|_| "5432".to_owned());
    format!("postgres://postgres@127.0.0.1:{port}")
}

/// Runs `sql` on the server's `postgres` database, one statement at a time across the
/// tests (PostgreSQL refuses a `CREATE DATABASE` while another copies the template).
async fn admin(sql: &str) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE_AT_A_TIME.lock().await;
    let url = format!("{}/postgres?sslmode=disable", server());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("the machine's PostgreSQL answers (scripts/deps.sh starts one)");
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
}

impl Database {
    pub(crate) async fn create(test: &str) -> Self {
        let name = format!("weir_store_{test}_{}", std::process::id());
        admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        admin(&format!("CREATE DATABASE {name}")).await;
        Self {
            name,
            stop: CancellationToken::new(),
        }
    }

    pub(crate) async fn drop_now(self) {
        self.stop.cancel();
        admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await;
    }
}

impl Harness for Database {
    async fn open(&self) -> Store {
        let url = format!("{}/{}?sslmode=disable", server(), self.name);
        Store::new(Arc::new(
            Postgres::open(&url, self.stop.clone()).await.unwrap(),
        ))
    }
}

fn body(n: u64) -> Value {
    json!({"name": "a", "n": n})
}

/// The next change a feed announces that is not `All` (PostgreSQL's listener announces
/// `All` whenever it starts listening).
async fn next_one(feed: &mut Feed) -> Change {
    loop {
        let c = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("a change is announced within 10 s")
            .expect("the feed is open");
        if c != Change::All {
            return c;
        }
    }
}

/// Versions count from 1; a write over the wrong version, or a new object over one that
/// exists, is a conflict that changes nothing; so is a delete at the wrong version.
async fn conflicts_change_nothing(h: &impl Harness) {
    let s = h.open().await;
    assert_eq!(
        s.put(Kind::Rule, "a", &body(1), Expect::Absent)
            .await
            .unwrap(),
        1
    );
    let again = s.put(Kind::Rule, "a", &body(9), Expect::Absent).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { .. })),
        "{again:?}"
    );
    let stale = s.put(Kind::Rule, "a", &body(9), Expect::Version(7)).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(
        s.put(Kind::Rule, "a", &body(2), Expect::Version(1))
            .await
            .unwrap(),
        2
    );
    let wrong = s.delete(Kind::Rule, "a", 1).await;
    assert!(
        matches!(wrong, Err(StoreError::Conflict { .. })),
        "{wrong:?}"
    );
    let got = s.get::<Value>(Kind::Rule, "a").await.unwrap().unwrap();
    assert_eq!((got.version, got.value), (2, body(2)));
    // Kinds do not mix: a connection of the same name is another object.
    assert!(
        s.get::<Value>(Kind::Connection, "a")
            .await
            .unwrap()
            .is_none()
    );
    s.put(Kind::Connection, "a", &body(5), Expect::Absent)
        .await
        .unwrap();
    s.delete(Kind::Rule, "a", 2).await.unwrap();
    assert!(s.get::<Value>(Kind::Rule, "a").await.unwrap().is_none());
    let missing = s.delete(Kind::Rule, "a", 2).await;
    assert!(
        matches!(missing, Err(StoreError::Conflict { .. })),
        "{missing:?}"
    );
    assert_eq!(
        s.versions(Kind::Connection).await.unwrap(),
        [("a".to_owned(), 1)]
    );
}

/// Every change is announced to every subscriber.
async fn every_subscriber_hears_every_change(h: &impl Harness) {
    let s = h.open().await;
    let (mut one, mut two) = (s.subscribe(), s.subscribe());
    s.put(Kind::Token, "t", &body(1), Expect::Absent)
        .await
        .unwrap();
    s.delete(Kind::Token, "t", 1).await.unwrap();
    for feed in [&mut one, &mut two] {
        assert_eq!(
            next_one(feed).await,
            Change::One(Kind::Token, "t".to_owned())
        );
        assert_eq!(
            next_one(feed).await,
            Change::One(Kind::Token, "t".to_owned())
        );
    }
}

/// What was stored is there after a restart, at its version, in name order; an object
/// that does not parse as its kind says is skipped.
async fn a_restart_keeps_everything(h: &impl Harness) {
    {
        let s = h.open().await;
        for name in ["b", "a", "c"] {
            s.put(Kind::Rule, name, &json!({"name": name}), Expect::Absent)
                .await
                .unwrap();
        }
        s.put(
            Kind::Rule,
            "b",
            &json!({"name": "b", "x": 1}),
            Expect::Version(1),
        )
        .await
        .unwrap();
        s.put(Kind::Rule, "odd", &json!([1, 2]), Expect::Absent)
            .await
            .unwrap();
        s.delete(Kind::Rule, "c", 1).await.unwrap();
    }
    let s = h.open().await;
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Named {
        name: String,
    }
    let listed = s.list::<Named>(Kind::Rule).await.unwrap();
    let names: Vec<(&str, u64)> = listed
        .iter()
        .map(|(n, v)| (n.as_str(), v.version))
        .collect();
    assert_eq!(names, [("a", 1), ("b", 2)], "odd does not parse as a Named");
    assert_eq!(s.versions(Kind::Rule).await.unwrap().len(), 3);
}

#[tokio::test]
async fn local_files_pass_the_suite() {
    for case in 0..3 {
        let h = Files(tempfile::tempdir().unwrap());
        match case {
            0 => conflicts_change_nothing(&h).await,
            1 => every_subscriber_hears_every_change(&h).await,
            _ => a_restart_keeps_everything(&h).await,
        }
    }
}

#[tokio::test]
async fn postgres_passes_the_suite() {
    for (case, test) in ["conflicts", "feed", "restart"].into_iter().enumerate() {
        let h = Database::create(test).await;
        match case {
            0 => conflicts_change_nothing(&h).await,
            1 => every_subscriber_hears_every_change(&h).await,
            _ => a_restart_keeps_everything(&h).await,
        }
        h.drop_now().await;
    }
}

/// Another replica's write (another connection to the database) is announced here too.
#[tokio::test]
async fn postgres_announces_other_replicas_changes() {
    let h = Database::create("replicas").await;
    let (here, there) = (h.open().await, h.open().await);
    let mut feed = here.subscribe();
    there
        .put(Kind::Connection, "c", &body(1), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        next_one(&mut feed).await,
        Change::One(Kind::Connection, "c".to_owned())
    );
    // The copy here was stale: its write over nothing is refused.
    let stale = here
        .put(Kind::Connection, "c", &body(2), Expect::Absent)
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    h.drop_now().await;
}

fn files_of(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A line torn by a crash is a change that was never answered: dropped. A damaged line
/// in the middle loses only its own change: the store opens, the changes after it apply,
/// the line is counted and the journal kept aside.
#[tokio::test]
async fn a_torn_or_damaged_journal_loses_only_the_changes_it_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Files(tempfile::tempdir_in(tmp.path()).unwrap());
    {
        let s = h.open().await;
        for name in ["a", "b", "c"] {
            s.put(Kind::Rule, name, &json!({"name": name}), Expect::Absent)
                .await
                .unwrap();
        }
    }
    let journal = h.0.path().join(JOURNAL);
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    let damaged = format!(
        "{}\n{}\n{}\n{}",
        lines[0],
        &lines[1][..10],
        lines[2],
        &lines[1][..20]
    );
    std::fs::write(&journal, damaged).unwrap();
    let s = h.open().await;
    assert_eq!(s.corrupt(), 1);
    let names: Vec<String> = s
        .versions(Kind::Rule)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert!(
        files_of(h.0.path())
            .iter()
            .any(|f| f.starts_with("store.journal.corrupt-")),
        "{:?}",
        files_of(h.0.path())
    );
    drop(s);
    // Folded into a snapshot: the next open finds nothing wrong and the same objects.
    let s = h.open().await;
    assert_eq!(
        (s.corrupt(), s.versions(Kind::Rule).await.unwrap().len()),
        (0, 2)
    );
}

/// A name no object may have (a journal edited by hand) is not served: the object is
/// skipped, however long or strange the name.
#[tokio::test]
async fn an_object_with_a_name_that_is_not_one_is_skipped() {
    let h = Files(tempfile::tempdir().unwrap());
    let long = "x".repeat(100_000);
    let mut lines = String::new();
    for name in ["good", "a b", "../up", "", long.as_str()] {
        let line =
            json!({"put": {"kind": "rule", "name": name, "version": 1, "body": {"name": name}}});
        lines.push_str(&format!("{line}\n"));
    }
    std::fs::write(h.0.path().join(JOURNAL), lines).unwrap();
    let s = h.open().await;
    let listed = s.list::<Value>(Kind::Rule).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["good"]);
    assert!(s.get::<Value>(Kind::Rule, "a b").await.unwrap().is_none());
}

/// A journal that cannot be written refuses the change, and memory stays what the disk
/// holds; once the disk recovers, the next change writes a whole snapshot.
#[tokio::test]
async fn a_journal_that_cannot_be_written_refuses_the_change() {
    let h = Files(tempfile::tempdir().unwrap());
    let s = h.open().await;
    s.put(Kind::Rule, "a", &body(1), Expect::Absent)
        .await
        .unwrap();
    drop(s);
    // The journal cannot be opened again (as on a full or read-only disk).
    let journal = h.0.path().join(JOURNAL);
    let s = h.open().await;
    std::fs::remove_file(&journal).unwrap();
    std::fs::create_dir(&journal).unwrap();
    let err = s
        .put(Kind::Rule, "b", &body(1), Expect::Absent)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot write the journal"),
        "{err}"
    );
    assert!(s.delete(Kind::Rule, "a", 1).await.is_err());
    assert_eq!(s.versions(Kind::Rule).await.unwrap(), [("a".to_owned(), 1)]);
    std::fs::remove_dir(&journal).unwrap();
    s.put(Kind::Rule, "b", &body(1), Expect::Absent)
        .await
        .unwrap();
    drop(s);
    assert_eq!(h.open().await.versions(Kind::Rule).await.unwrap().len(), 2);
}

/// Changes go to a journal that is folded into the snapshot once it outgrows it; both
/// are weir's user's alone.
#[tokio::test]
async fn the_journal_is_folded_into_a_private_snapshot() {
    use std::os::unix::fs::PermissionsExt;
    let h = Files(tempfile::tempdir().unwrap());
    let s = h.open().await;
    for i in 0..3 {
        s.put(Kind::Rule, &format!("r{i}"), &body(i), Expect::Absent)
            .await
            .unwrap();
    }
    let (snapshot, journal) = (h.0.path().join(SNAPSHOT), h.0.path().join(JOURNAL));
    assert!(!snapshot.exists());
    let mode = std::fs::metadata(&journal).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    for i in 3..1000 {
        s.put(Kind::Rule, &format!("r{i}"), &body(i), Expect::Absent)
            .await
            .unwrap();
    }
    let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let journal_len = std::fs::metadata(&journal).map_or(0, |m| m.len());
    let snapshot_len = std::fs::metadata(&snapshot).unwrap().len();
    assert!(
        journal_len <= snapshot_len.max(64 * 1024) + 1024,
        "journal {journal_len} bytes"
    );
    drop(s);
    assert_eq!(
        h.open().await.versions(Kind::Rule).await.unwrap().len(),
        1000
    );
}

/// A data directory of the weir before the store (rules in `rules.json` and
/// `rules.journal`, connections and tokens in files of their own): its objects are read
/// at the first open, at their versions, and its files set aside.
#[tokio::test]
async fn an_earlier_weirs_files_are_read_once() {
    let h = Files(tempfile::tempdir().unwrap());
    let dir = h.0.path();
    let rule = |name: &str, version: u64| {
        json!({"name": name, "sql": "SELECT * FROM 'a'", "actions": [], "enabled": true,
               "sql_version": "2016-03-23", "source": "api", "created_at_ms": 1,
               "updated_at_ms": 1, "version": version})
    };
    std::fs::write(
        dir.join("rules.json"),
        json!({"version": 1, "rules": [rule("a", 3), rule("b", 1), rule("old", 0)]}).to_string(),
    )
    .unwrap();
    let journal = format!(
        "{}\n{}\n{{\"put\": {{\"name\": \"torn",
        json!({"put": rule("c", 1)}),
        json!({"remove": "b"})
    );
    std::fs::write(dir.join("rules.journal"), journal).unwrap();
    std::fs::write(
        dir.join("connections.json"),
        json!({"version": 1, "connections": [{"name": "events", "webhook": {"url": "https://h/"},
               "source": "api", "created_at_ms": 1, "updated_at_ms": 1}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokens.json"),
        json!({"version": 1, "tokens": {"ci": {"role": "editor", "sha256": "00", "created_at_ms": 1}}})
            .to_string(),
    )
    .unwrap();
    let s = h.open().await;
    let mut rules = s.versions(Kind::Rule).await.unwrap();
    rules.sort();
    assert_eq!(
        rules,
        [
            ("a".to_owned(), 3),
            ("c".to_owned(), 1),
            ("old".to_owned(), 0)
        ]
    );
    assert_eq!(
        s.versions(Kind::Connection).await.unwrap(),
        [("events".to_owned(), 1)]
    );
    assert_eq!(
        s.versions(Kind::Token).await.unwrap(),
        [("ci".to_owned(), 1)]
    );
    let c = s
        .get::<Value>(Kind::Connection, "events")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.value["webhook"]["url"], "https://h/");
    // A rule without a version of its own is replaced over version 0.
    s.put(Kind::Rule, "old", &rule("old", 1), Expect::Version(0))
        .await
        .unwrap();
    drop(s);
    assert_eq!(
        files_of(dir),
        [
            "connections.json.imported",
            "rules.journal.imported",
            "rules.json.imported",
            "store.journal",
            "store.json",
            "tokens.json.imported"
        ]
    );
    // Read once: opened again, the store is its own files.
    let s = h.open().await;
    assert_eq!(s.versions(Kind::Rule).await.unwrap().len(), 3);
    assert_eq!(
        s.get::<Value>(Kind::Rule, "old")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
}

/// An earlier weir's file that is not readable stops the start, naming it.
#[tokio::test]
async fn an_unreadable_earlier_file_is_refused_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("tokens.json"),
        b"{\"version\": 1, \"tokens\": {\"ci\": ",
    )
    .unwrap();
    let err = Local::open(tmp.path()).err().unwrap();
    assert!(
        format!("{err:#}").contains("tokens.json is not readable"),
        "{err:#}"
    );
    assert!(tmp.path().join("tokens.json").exists(), "left as it was");
}
