//! One behavioural suite for the storage API, run against SQLite and PostgreSQL
//! (one suite for both backends): each case is a generic async fn over a migrated `Store`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ganglion_core::StreamKind;
use ganglion_storage::{
    Backend, Store,
    accounts::NewLogin,
    events::{NewEvent, NewRoom},
};

fn unique(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let s: String = (0..10)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)).to_ascii_lowercase())
        .collect();
    format!("{prefix}_{s}")
}

fn pg_url() -> String {
    std::env::var("GANGLION_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A connection to PostgreSQL's `postgres` database, for CREATE/DROP DATABASE.
async fn admin() -> Store {
    Store::connect(
        &format!("{}/postgres", pg_url()),
        1,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// A fresh, migrated store; the returned closure-ish guard drops a PostgreSQL database.
struct Fixture {
    store: Store,
    pg_db: Option<String>,
    dir: std::path::PathBuf,
}

impl Fixture {
    async fn new(backend: Backend) -> Fixture {
        let dir = std::env::temp_dir().join(unique("ganglion-storage"));
        std::fs::create_dir_all(&dir).unwrap();
        let (url, pg_db) = match backend {
            Backend::Sqlite => (format!("sqlite://{}/t.db", dir.display()), None),
            Backend::Postgres => {
                let name = unique("ganglion_st");
                let admin = admin().await;
                admin
                    .execute_admin(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                admin.close().await;
                (format!("{}/{name}", pg_url()), Some(name))
            }
        };
        let store = Store::connect(&url, 4, Duration::from_secs(10))
            .await
            .unwrap();
        let every: Vec<i64> = ganglion_storage::MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(store.migrate().await.unwrap(), every);
        assert!(
            store.migrate().await.unwrap().is_empty(),
            "migrations are idempotent"
        );
        Fixture { store, pg_db, dir }
    }

    async fn done(self) {
        self.store.close().await;
        if let Some(name) = self.pg_db {
            let admin = admin().await;
            admin
                .execute_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .unwrap();
            admin.close().await;
        }
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let f = super::Fixture::new(ganglion_storage::Backend::Sqlite).await;
                super::$name(&f.store).await;
                f.done().await;
            }
            #[tokio::test]
            async fn postgres() {
                let f = super::Fixture::new(ganglion_storage::Backend::Postgres).await;
                super::$name(&f.store).await;
                f.done().await;
            }
        }
    };
}

async fn users_and_tokens(s: &Store) {
    s.insert_user("@a:x", Some("hash"), false).await.unwrap();
    assert!(matches!(
        s.insert_user("@a:x", None, false).await,
        Err(ganglion_storage::Error::Conflict(_))
    ));
    let u = s
        .select_user_case_insensitive("@A:x")
        .await
        .unwrap()
        .expect("case-insensitive");
    assert_eq!(u.user_id, "@a:x");
    s.insert_login(NewLogin {
        user_id: "@a:x",
        device_id: "DEV",
        display_name: Some("phone"),
        access_token: "tok1",
        expires_ts: None,
        refresh_token: Some("ref1"),
        ip: Some("127.0.0.1"),
    })
    .await
    .unwrap();
    assert_eq!(
        s.select_token_owner("tok1")
            .await
            .unwrap()
            .expect("owner")
            .device_id,
        "DEV"
    );
    let rotated = s
        .rotate_refresh_token("ref1", "tok2", "ref2", 99)
        .await
        .unwrap();
    assert_eq!(rotated, Some(("@a:x".into(), "DEV".into())));
    assert!(
        s.select_token_owner("tok1").await.unwrap().is_none(),
        "old access token revoked"
    );
    assert!(
        s.rotate_refresh_token("ref1", "t", "r", 1)
            .await
            .unwrap()
            .is_none(),
        "refresh tokens are single-use"
    );
    assert_eq!(s.select_devices("@a:x").await.unwrap().len(), 1);
    s.deactivate_user("@a:x").await.unwrap();
    assert!(s.select_token_owner("tok2").await.unwrap().is_none());
    assert!(
        s.select_user("@a:x")
            .await
            .unwrap()
            .expect("user")
            .deactivated
    );
}
both!(users_and_tokens);

fn event(id: &str, room: &str, kind: &str, sk: Option<&str>, prev: &[&str]) -> NewEvent {
    NewEvent {
        event_id: id.into(),
        room_id: room.into(),
        sender: "@a:x".into(),
        kind: kind.into(),
        state_key: sk.map(str::to_owned),
        depth: 1,
        origin_server_ts: 1,
        json: format!(r#"{{"type":"{kind}","content":{{"membership":"join"}}}}"#),
        unsigned: None,
        txn: None,
        prev_events: prev.iter().map(|p| (*p).to_owned()).collect(),
        prev_state_group: None,
        membership: (kind == "m.room.member").then(|| "join".into()),
        redacts: None,
        new_room: (kind == "m.room.create").then(|| NewRoom {
            version: "11".into(),
            creator: "@a:x".into(),
        }),
        outlier: false,
        state_before: None,
        resolved_current: None,
        soft_failed: false,
        push_actions: Vec::new(),
    }
}

async fn events_state_and_streams(s: &Store) {
    let batch = vec![
        event("$c", "!r:x", "m.room.create", Some(""), &[]),
        event("$m", "!r:x", "m.room.member", Some("@a:x"), &["$c"]),
        event("$1", "!r:x", "m.room.message", None, &["$m"]),
    ];
    let done = s.persist_events(&batch, 1, 1).await.unwrap();
    assert_eq!(
        done.iter().map(|d| d.stream_ordering).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        done[2].state_group, done[1].state_group,
        "a message keeps the room's state group"
    );
    assert_eq!(s.select_stream_max(StreamKind::Events).await.unwrap(), 3);
    let ext = s.select_extremities("!r:x").await.unwrap();
    assert_eq!(
        ext.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        vec!["$1"]
    );
    let state = s
        .select_state_group(done[2].state_group.expect("group"))
        .await
        .unwrap();
    assert_eq!(state.len(), 2);
    assert_eq!(
        s.select_membership("!r:x", "@a:x")
            .await
            .unwrap()
            .map(|m| m.0),
        Some("join".into())
    );
    assert_eq!(
        s.select_joined_servers("!r:x").await.unwrap(),
        vec!["x".to_owned()]
    );
    let back = s.select_room_events("!r:x", 0, 3, true, 2).await.unwrap();
    assert_eq!(
        back.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
        vec!["$1", "$m"]
    );
    assert_eq!(
        s.select_rooms_with_events(2, 3).await.unwrap(),
        vec!["!r:x".to_owned()]
    );

    // Many state changes: deltas roll over into snapshots and still read back whole.
    let mut prev = "$1".to_owned();
    let mut group = done[2].state_group;
    for i in 0..80 {
        let id = format!("$s{i}");
        let mut ev = event(
            &id,
            "!r:x",
            "m.custom",
            Some(&format!("k{i}")),
            &[prev.as_str()],
        );
        ev.prev_state_group = group;
        let d = s.persist_events(&[ev], 4 + i, 3 + i).await.unwrap();
        group = d[0].state_group;
        prev = id;
    }
    let full = s.select_state_group(group.expect("group")).await.unwrap();
    assert_eq!(full.len(), 82);

    // A duplicate event id fails the batch and writes none of it.
    let dup = vec![
        event("$new", "!r:x", "m.room.message", None, &[]),
        event("$1", "!r:x", "m.room.message", None, &[]),
    ];
    assert!(s.persist_events(&dup, 1000, 1000).await.is_err());
    assert!(
        s.select_event("$new").await.unwrap().is_none(),
        "a failed batch is rolled back"
    );
}
both!(events_state_and_streams);

/// Backfilled history goes below every position; an outlier stays out of the timeline
/// until backfill places it; the frontier moves.
async fn backfill_places_history(s: &Store) {
    use ganglion_storage::backfill::HistoricEvent;
    let mut create = event("$c", "!b:x", "m.room.create", Some(""), &[]);
    create.outlier = true;
    let join = event("$j", "!b:x", "m.room.member", Some("@a:x"), &["$c"]);
    let done = s.persist_events(&[create, join], 1, 1).await.unwrap();
    assert_eq!(done[1].stream_ordering, 2);
    let timeline = |s: &Store| {
        let s = s.clone();
        async move {
            s.select_room_events("!b:x", i64::MIN, 10, true, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.event_id, e.stream_ordering))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        timeline(s).await,
        vec![("$j".to_owned(), 2)],
        "the outlier is not history"
    );
    assert_eq!(
        s.select_event_near_ts("!b:x", 0, true)
            .await
            .unwrap()
            .map(|e| e.0),
        Some("$j".to_owned()),
        "nor is it found by time"
    );
    s.insert_backfill_frontier("!b:x", &["$m2".into()])
        .await
        .unwrap();
    assert_eq!(
        s.select_backfill_frontier("!b:x").await.unwrap(),
        vec!["$m2"]
    );
    let hist = |id: &str, depth: i64| HistoricEvent {
        event_id: id.into(),
        sender: "@a:x".into(),
        kind: "m.room.message".into(),
        state_key: None,
        depth,
        origin_server_ts: depth,
        json: "{}".into(),
        redacts: None,
    };
    let mut c = hist("$c", 1);
    c.kind = "m.room.create".into();
    let n = s
        .insert_backfilled(
            "!b:x",
            &[hist("$m2", 3), hist("$m1", 2), c, hist("$j", 4)],
            &["$m2".into()],
            &["$gone".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        n, 3,
        "two new events and the outlier; the join is history already"
    );
    assert_eq!(
        timeline(s).await,
        vec![
            ("$j".to_owned(), 2),
            ("$m2".to_owned(), -1),
            ("$m1".to_owned(), -2),
            ("$c".to_owned(), -3)
        ]
    );
    assert_eq!(
        s.select_backfill_frontier("!b:x").await.unwrap(),
        vec!["$gone"]
    );
    // A second batch goes below the first.
    let n = s
        .insert_backfilled("!b:x", &[hist("$m0", 1)], &["$gone".into()], &[])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(timeline(s).await.last(), Some(&("$m0".to_owned(), -4)));
    assert!(s.select_backfill_frontier("!b:x").await.unwrap().is_empty());
}
both!(backfill_places_history);

async fn account_data_receipts_filters_aliases(s: &Store) {
    s.upsert_account_data("@a:x", "", "m.direct", "{}", 1)
        .await
        .unwrap();
    s.upsert_account_data("@a:x", "!r:x", "m.tag", r#"{"tags":{}}"#, 2)
        .await
        .unwrap();
    s.upsert_account_data("@a:x", "", "m.direct", r#"{"x":1}"#, 3)
        .await
        .unwrap();
    let since = s.select_account_data_since("@a:x", 1, 3).await.unwrap();
    assert_eq!(since.len(), 2);
    assert_eq!(
        s.select_account_data("@a:x", "", "m.direct")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"x":1}"#)
    );
    assert_eq!(s.insert_filter("@a:x", "{}").await.unwrap(), 0);
    assert_eq!(s.insert_filter("@a:x", "{\"a\":1}").await.unwrap(), 1);
    assert_eq!(
        s.select_filter("@a:x", 1).await.unwrap().as_deref(),
        Some("{\"a\":1}")
    );
    s.insert_alias("#a:x", "!r:x", "@a:x").await.unwrap();
    assert!(matches!(
        s.insert_alias("#a:x", "!q:x", "@a:x").await,
        Err(ganglion_storage::Error::Conflict(_))
    ));
    assert_eq!(
        s.select_room_aliases("!r:x").await.unwrap(),
        vec!["#a:x".to_owned()]
    );
    assert!(s.delete_alias("#a:x").await.unwrap());
    assert!(!s.delete_alias("#a:x").await.unwrap());
}
both!(account_data_receipts_filters_aliases);

async fn openid_tokens_expire(s: &Store) {
    s.insert_user("@o:x", None, false).await.unwrap();
    s.insert_openid_token("old", "@o:x", 100, 50).await.unwrap();
    s.insert_openid_token("new", "@o:x", 10_000, 50)
        .await
        .unwrap();
    assert_eq!(
        s.select_openid_token_owner("new", 200)
            .await
            .unwrap()
            .as_deref(),
        Some("@o:x")
    );
    assert!(
        s.select_openid_token_owner("old", 200)
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    assert!(
        s.select_openid_token_owner("nope", 0)
            .await
            .unwrap()
            .is_none()
    );
    // Issuing another drops the expired ones.
    s.insert_openid_token("newer", "@o:x", 20_000, 5_000)
        .await
        .unwrap();
    assert!(
        s.select_openid_token_owner("old", 0)
            .await
            .unwrap()
            .is_none(),
        "deleted"
    );
    assert!(matches!(
        s.insert_openid_token("newer", "@o:x", 20_000, 5_000).await,
        Err(ganglion_storage::Error::Conflict(_))
    ));
    s.deactivate_user("@o:x").await.unwrap();
    assert!(
        s.select_openid_token_owner("new", 200)
            .await
            .unwrap()
            .is_none(),
        "a deactivated user's tokens stop working"
    );
}
both!(openid_tokens_expire);

async fn current_state_of_one_type(s: &Store) {
    let create = event("$c", "!sp:x", "m.room.create", Some(""), &[]);
    let mut a = event("$a", "!sp:x", "m.space.child", Some("!a:x"), &["$c"]);
    let mut b = event("$b", "!sp:x", "m.space.child", Some("!b:x"), &["$a"]);
    let mut other = event("$o", "!sp:x", "m.room.name", Some(""), &["$b"]);
    let first = s.persist_events(&[create], 1, 1).await.unwrap();
    a.prev_state_group = first[0].state_group;
    let second = s.persist_events(&[a], 2, 2).await.unwrap();
    b.prev_state_group = second[0].state_group;
    let third = s.persist_events(&[b], 3, 3).await.unwrap();
    other.prev_state_group = third[0].state_group;
    s.persist_events(&[other], 4, 4).await.unwrap();
    let mut children = s
        .select_current_state_of_type("!sp:x", "m.space.child")
        .await
        .unwrap();
    children.sort();
    assert_eq!(
        children,
        vec![
            ("!a:x".to_owned(), "$a".to_owned()),
            ("!b:x".to_owned(), "$b".to_owned())
        ]
    );
    assert!(
        s.select_current_state_of_type("!other:x", "m.space.child")
            .await
            .unwrap()
            .is_empty()
    );
}
both!(current_state_of_one_type);

/// Both migration sets carry the same numbers and yield the same tables and columns.
#[tokio::test]
async fn migrations_are_in_step() {
    let lite = Fixture::new(Backend::Sqlite).await;
    let pg = Fixture::new(Backend::Postgres).await;
    let a = lite.store.schema_columns().await.unwrap();
    let b = pg.store.schema_columns().await.unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, b, "SQLite and PostgreSQL schemas differ");
    lite.done().await;
    pg.done().await;
}

mod dehydrated;
mod key_backup;
