//! What every shadow store must do, run against both: files under a temporary directory,
//! and PostgreSQL (the machine's server, `WEIR_PG_PORT` or 5432, in a database of its own).

use super::local::Local;
use super::postgres::Postgres;
use super::{Expect, ShadowBackend, Write};
use crate::shadow::document::{Record, TOMBSTONE_SECS};
use crate::shadow::topic::ShadowId;
use crate::store::tests::{Database, server};

fn id(thing: &str, name: Option<&str>) -> ShadowId {
    ShadowId::new(thing, name).unwrap()
}

fn record(version: u64, deleted_at: Option<u64>) -> Record {
    Record {
        version,
        deleted_at,
        ..Record::default()
    }
}

fn write(id: ShadowId, expect: Expect, record: Record) -> Write {
    Write { id, expect, record }
}

/// Writes, a stale batch, a reopen, listing and sweeping, against the store `open` gives.
async fn suite<S: ShadowBackend>(open: impl AsyncFn() -> S) {
    let store = open().await;
    let writes = [
        write(id("lamp", None), Expect::Absent, record(1, None)),
        write(id("lamp", Some("b")), Expect::Absent, record(1, None)),
        write(id("lamp", Some("a")), Expect::Absent, record(3, None)),
        write(id("lamp", Some("B")), Expect::Absent, record(1, None)),
        write(
            id("lamp", Some("gone")),
            Expect::Absent,
            record(2, Some(100)),
        ),
        write(id("lamp2", Some("x")), Expect::Absent, record(1, None)),
    ];
    assert!(store.commit(&writes).await.unwrap());
    assert_eq!(store.count(), 6);
    // A batch with one write over what is no longer there writes nothing.
    let stale = [
        write(id("lamp", Some("c")), Expect::Absent, record(1, None)),
        write(
            id("lamp", Some("a")),
            Expect::Was {
                version: 2,
                live: true,
            },
            record(3, None),
        ),
    ];
    assert!(!store.commit(&stale).await.unwrap());
    // Nor does one expecting a live shadow where there is a tombstone of its version.
    let deleted = [write(
        id("lamp", Some("gone")),
        Expect::Was {
            version: 2,
            live: true,
        },
        record(3, None),
    )];
    assert!(!store.commit(&deleted).await.unwrap());
    let ids = [
        id("lamp", Some("c")),
        id("lamp", Some("a")),
        id("lamp", Some("gone")),
    ];
    let loaded = store.load(&ids).await.unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[&ids[1]].version, 3);
    assert_eq!(loaded[&ids[2]].deleted_at, Some(100));
    // Over what was loaded, a write goes through.
    let next = [write(
        id("lamp", Some("a")),
        Expect::of(Some(&loaded[&ids[1]])),
        record(4, None),
    )];
    assert!(store.commit(&next).await.unwrap());
    drop(store);

    let store = open().await;
    assert_eq!(store.count(), 6);
    assert_eq!(store.load(&ids).await.unwrap()[&ids[1]].version, 4);
    // Named shadows only, in byte order, without tombstones, a page at a time.
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        store.list("lamp", None, 10).await.unwrap(),
        (names(&["B", "a", "b"]), false)
    );
    assert_eq!(
        store.list("lamp", None, 2).await.unwrap(),
        (names(&["B", "a"]), true)
    );
    assert_eq!(
        store.list("lamp", Some("a"), 2).await.unwrap(),
        (names(&["b"]), false)
    );
    assert!(store.list("nobody", None, 10).await.unwrap().0.is_empty());
    // Tombstones go after 48 hours, and only they.
    assert_eq!(store.sweep(100 + 3600).await.unwrap(), 0);
    assert_eq!(store.sweep(100 + TOMBSTONE_SECS).await.unwrap(), 1);
    assert_eq!(store.count(), 5);
    assert!(store.bytes() > 0);
}

#[tokio::test]
async fn local_files_pass_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(async || Local::open(dir.path(), 1 << 20).unwrap()).await;
}

#[tokio::test]
async fn postgres_passes_the_suite() {
    let db = Database::create("shadows").await;
    let url = format!("{}/{}?sslmode=disable", server(), db.name);
    suite(async || Postgres::open(&url).await.unwrap()).await;
    db.drop_now().await;
}

#[tokio::test]
async fn a_damaged_row_reads_as_absent_and_can_be_written_again() {
    let db = Database::create("shadows_damaged").await;
    let url = format!("{}/{}?sslmode=disable", server(), db.name);
    let store = Postgres::open(&url).await.unwrap();
    {
        let client = store.client().await.unwrap();
        client
            .batch_execute(
                "INSERT INTO weir_shadows (thing, shadow, version, doc) \
                 VALUES ('lamp', '', 7, '{\"not\": \"a record\"}')",
            )
            .await
            .unwrap();
    }
    let ids = [id("lamp", None)];
    let loaded = store.load(&ids).await.unwrap();
    let damaged = &loaded[&ids[0]];
    assert!(
        damaged.expired(crate::shadow::Shadows::now()),
        "read as absent: {damaged:?}"
    );
    let over = [write(
        id("lamp", None),
        Expect::of(Some(damaged)),
        record(1, None),
    )];
    assert!(store.commit(&over).await.unwrap());
    assert_eq!(store.load(&ids).await.unwrap()[&ids[0]].version, 1);
    drop(store);
    db.drop_now().await;
}

#[tokio::test]
async fn a_damaged_file_record_is_replaced_not_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Local::open(dir.path(), 1 << 20).unwrap();
    let ids = [id("lamp", None)];
    assert!(
        store
            .commit(&[write(ids[0].clone(), Expect::Absent, record(1, None))])
            .await
            .unwrap()
    );
    store.damage(&ids[0]);
    assert!(store.load(&ids).await.unwrap().is_empty());
    assert!(
        store
            .commit(&[write(ids[0].clone(), Expect::Absent, record(1, None))])
            .await
            .unwrap()
    );
    assert_eq!(store.count(), 1);
}
