//! Membership over a real database (SQLite file and PostgreSQL): leases, views converging,
//! crashed members dropping out, clean leaves, and cursors surviving a handover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ganglion_cluster::{Membership, Settings, owner};
use ganglion_storage::Store;
use tokio_util::sync::CancellationToken;

fn suffix() -> String {
    use rand::Rng;
    format!("{:08x}", rand::rng().random::<u32>())
}

/// A migrated store on `backend` ("sqlite" or "postgres") and a cleanup.
async fn store(backend: &str) -> (Store, Option<String>) {
    let url = match backend {
        "sqlite" => {
            let dir = std::env::temp_dir().join(format!("ganglion-cluster-{}", suffix()));
            std::fs::create_dir_all(&dir).unwrap();
            format!("sqlite://{}/c.db", dir.display())
        }
        _ => {
            let base = std::env::var("GANGLION_TEST_PG")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
            let name = format!("ganglion_cl_{}", suffix());
            let admin = Store::connect(&format!("{base}/postgres"), 1, Duration::from_secs(10))
                .await
                .unwrap();
            admin
                .execute_admin(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin.close().await;
            return (migrated(&format!("{base}/{name}")).await, Some(name));
        }
    };
    (migrated(&url).await, None)
}

async fn migrated(url: &str) -> Store {
    let s = Store::connect(url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s
}

async fn drop_db(store: Store, name: Option<String>) {
    store.close().await;
    if let Some(name) = name {
        let base = std::env::var("GANGLION_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let admin = Store::connect(&format!("{base}/postgres"), 1, Duration::from_secs(10))
            .await
            .unwrap();
        let _ = admin
            .execute_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        admin.close().await;
    }
}

fn settings(instance: &str) -> Settings {
    Settings {
        role: "federation-sender".into(),
        instance: instance.into(),
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_millis(600),
    }
}

/// Waits until every member sees exactly `want`.
async fn converge(members: &[&Membership], want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if members.iter().all(|m| m.view().members == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "views did not converge on {want:?}: {:?}",
            members.iter().map(|m| m.view().members).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn elastic_membership(backend: &str) {
    let (store, db) = store(backend).await;
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let stop_c = CancellationToken::new();
    let a = Membership::join(store.clone(), settings("a"), stop_a.clone())
        .await
        .unwrap();
    let b = Membership::join(store.clone(), settings("b"), stop_b.clone())
        .await
        .unwrap();
    let c = Membership::join(store.clone(), settings("c"), stop_c.clone())
        .await
        .unwrap();
    converge(&[&a, &b, &c], &["a", "b", "c"]).await;

    // Every key has exactly one owner, and every member agrees which.
    let keys: Vec<String> = (0..300).map(|i| format!("remote{i}.example")).collect();
    for k in &keys {
        let owners = [&a, &b, &c].iter().filter(|m| m.owns(k)).count();
        assert_eq!(owners, 1, "{k}");
    }
    let before: Vec<Option<String>> = keys
        .iter()
        .map(|k| a.view().owner(k).map(str::to_owned))
        .collect();

    // A clean leave: c's keys move, nobody else's.
    stop_c.cancel();
    tokio::time::timeout(Duration::from_secs(5), c.left())
        .await
        .unwrap();
    converge(&[&a, &b], &["a", "b"]).await;
    for (k, was) in keys.iter().zip(&before) {
        let now = a.view().owner(k).map(str::to_owned);
        if was.as_deref() != Some("c") {
            assert_eq!(&now, was, "{k} moved off a survivor");
        }
        assert_eq!(a.owns(k) as u8 + b.owns(k) as u8, 1, "{k}");
    }

    // A crash: a lease that is never renewed drops out once it runs out.
    store
        .renew_member("federation-sender", "ghost", "x", 300)
        .await
        .unwrap();
    converge(&[&a, &b], &["a", "b", "ghost"]).await;
    converge(&[&a, &b], &["a", "b"]).await;

    // A joiner takes keys only from others, never moves keys between them.
    let stop_d = CancellationToken::new();
    let d = Membership::join(store.clone(), settings("d"), stop_d.clone())
        .await
        .unwrap();
    converge(&[&a, &b, &d], &["a", "b", "d"]).await;
    let two = vec!["a".to_owned(), "b".to_owned()];
    for k in &keys {
        let was = owner(k, &two);
        let now = d.view().owner(k).map(str::to_owned);
        assert!(now.as_deref() == was || now.as_deref() == Some("d"), "{k}");
    }

    // Cursors: advance only forwards, and a new owner reads what the old one committed.
    assert_eq!(a.cursor("remote1.example").await.unwrap(), None);
    assert_eq!(a.advance("remote1.example", 40).await.unwrap(), 40);
    assert_eq!(
        a.advance("remote1.example", 30).await.unwrap(),
        40,
        "never back"
    );
    assert_eq!(d.cursor("remote1.example").await.unwrap(), Some(40));
    assert_eq!(d.advance("remote1.example", 41).await.unwrap(), 41);

    // A restart under the same name takes the lease over at once (one member, not two).
    stop_a.cancel();
    tokio::time::timeout(Duration::from_secs(5), a.left())
        .await
        .unwrap();
    let stop_a2 = CancellationToken::new();
    store
        .renew_member("federation-sender", "a", "crashed", 60_000)
        .await
        .unwrap();
    let a2 = Membership::join(store.clone(), settings("a"), stop_a2.clone())
        .await
        .unwrap();
    assert_eq!(a2.view().members, ["a", "b", "d"]);
    stop_a2.cancel();
    stop_b.cancel();
    stop_d.cancel();
    for m in [&a2, &b, &d] {
        tokio::time::timeout(Duration::from_secs(5), m.left())
            .await
            .unwrap();
    }
    assert!(
        store
            .select_members("federation-sender")
            .await
            .unwrap()
            .is_empty()
    );
    drop_db(store, db).await;
}

#[tokio::test]
async fn elastic_membership_on_sqlite() {
    elastic_membership("sqlite").await;
}

#[tokio::test]
async fn elastic_membership_on_postgres() {
    elastic_membership("postgres").await;
}
