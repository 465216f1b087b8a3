//! Key backup storage: versions, keys, etags and the replacement hook, on both databases.

use ganglion_storage::{
    Store,
    key_backup::{KeyScope, KeysWrite, RoomKeyRow},
};

// `both!` names `super::Fixture` from inside this module.
use super::Fixture;

fn key(room: &str, session: &str, fmi: i64, verified: bool, data: &str) -> RoomKeyRow {
    RoomKeyRow {
        room_id: room.into(),
        session_id: session.into(),
        first_message_index: fmi,
        forwarded_count: 0,
        is_verified: verified,
        session_data: format!(r#"{{"d":"{data}"}}"#),
    }
}

/// The new key wins when its first message index is lower (enough for storage's tests;
/// the real rule is the e2ee crate's).
fn lower_index(old: &RoomKeyRow, new: &RoomKeyRow) -> bool {
    new.first_message_index < old.first_message_index
}

async fn backup_versions_are_per_user_and_never_reused(s: &Store) {
    assert_eq!(s.select_backup_version("@a:x", None).await.unwrap(), None);
    assert_eq!(
        s.insert_backup_version("@a:x", "alg", "{}").await.unwrap(),
        1
    );
    assert_eq!(
        s.insert_backup_version("@a:x", "alg", r#"{"k":1}"#)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.insert_backup_version("@b:x", "other", "{}")
            .await
            .unwrap(),
        1,
        "another user's versions start at 1"
    );

    let latest = s
        .select_backup_version("@a:x", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            latest.version,
            latest.auth_data.as_str(),
            latest.etag,
            latest.count
        ),
        (2, r#"{"k":1}"#, 0, 0)
    );
    let first = s
        .select_backup_version("@a:x", Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.version, first.algorithm.as_str()), (1, "alg"));
    assert_eq!(
        s.select_backup_version("@a:x", Some(9)).await.unwrap(),
        None
    );

    assert!(
        s.update_backup_auth_data("@a:x", 1, r#"{"new":true}"#)
            .await
            .unwrap()
    );
    let first = s
        .select_backup_version("@a:x", Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.auth_data, r#"{"new":true}"#);
    assert!(!s.update_backup_auth_data("@a:x", 9, "{}").await.unwrap());

    assert!(s.delete_backup_version("@a:x", 2).await.unwrap());
    assert!(
        !s.delete_backup_version("@a:x", 2).await.unwrap(),
        "a deleted version is gone"
    );
    assert_eq!(
        s.select_backup_version("@a:x", Some(2)).await.unwrap(),
        None
    );
    assert!(!s.update_backup_auth_data("@a:x", 2, "{}").await.unwrap());
    assert_eq!(
        s.select_backup_version("@a:x", None)
            .await
            .unwrap()
            .unwrap()
            .version,
        1,
        "the latest undeleted version is current again"
    );
    assert_eq!(
        s.insert_backup_version("@a:x", "alg", "{}").await.unwrap(),
        3,
        "a deleted version's number is not handed out again"
    );
}
both!(backup_versions_are_per_user_and_never_reused);

async fn room_keys_follow_the_rule_and_raise_the_etag(s: &Store) {
    assert_eq!(
        s.upsert_room_keys("@a:x", 1, &[key("!r:x", "s1", 0, false, "a")], lower_index)
            .await
            .unwrap(),
        KeysWrite::NoSuchVersion,
        "no backup at all"
    );
    s.insert_backup_version("@a:x", "alg", "{}").await.unwrap();
    s.insert_backup_version("@a:x", "alg", "{}").await.unwrap();
    assert_eq!(
        s.upsert_room_keys("@a:x", 1, &[key("!r:x", "s1", 0, false, "a")], lower_index)
            .await
            .unwrap(),
        KeysWrite::NotCurrent { current: 2 }
    );
    assert_eq!(
        s.upsert_room_keys("@a:x", 7, &[key("!r:x", "s1", 0, false, "a")], lower_index)
            .await
            .unwrap(),
        KeysWrite::NoSuchVersion
    );

    let first = [
        key("!r:x", "s1", 5, false, "a"),
        key("!r:x", "s2", 0, false, "b"),
        key("!q:x", "s1", 0, true, "c"),
    ];
    assert_eq!(
        s.upsert_room_keys("@a:x", 2, &first, lower_index)
            .await
            .unwrap(),
        KeysWrite::Done { etag: 1, count: 3 }
    );
    // A worse key changes nothing, not even the etag.
    assert_eq!(
        s.upsert_room_keys(
            "@a:x",
            2,
            &[key("!r:x", "s1", 9, true, "worse")],
            lower_index
        )
        .await
        .unwrap(),
        KeysWrite::Done { etag: 1, count: 3 }
    );
    // A better one replaces it, and the etag moves.
    assert_eq!(
        s.upsert_room_keys(
            "@a:x",
            2,
            &[key("!r:x", "s1", 1, true, "better")],
            lower_index
        )
        .await
        .unwrap(),
        KeysWrite::Done { etag: 2, count: 3 }
    );
    let one = s
        .select_room_keys("@a:x", 2, KeyScope::Session("!r:x", "s1"))
        .await
        .unwrap();
    assert_eq!(one, vec![key("!r:x", "s1", 1, true, "better")]);

    let all = s.select_room_keys("@a:x", 2, KeyScope::All).await.unwrap();
    let ids: Vec<(&str, &str)> = all
        .iter()
        .map(|k| (k.room_id.as_str(), k.session_id.as_str()))
        .collect();
    assert_eq!(ids, vec![("!q:x", "s1"), ("!r:x", "s1"), ("!r:x", "s2")]);
    assert_eq!(
        s.select_room_keys("@a:x", 2, KeyScope::Room("!r:x"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        s.select_room_keys("@a:x", 2, KeyScope::Room("!none:x"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.select_room_keys("@b:x", 2, KeyScope::All)
            .await
            .unwrap()
            .is_empty(),
        "keys are the owner's"
    );
    let info = s
        .select_backup_version("@a:x", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((info.etag, info.count), (2, 3));

    // Deletes at each level; each raises the etag. Old versions may be deleted from.
    assert_eq!(
        s.delete_room_keys("@a:x", 2, KeyScope::Session("!r:x", "s2"))
            .await
            .unwrap(),
        KeysWrite::Done { etag: 3, count: 2 }
    );
    assert_eq!(
        s.delete_room_keys("@a:x", 2, KeyScope::Room("!q:x"))
            .await
            .unwrap(),
        KeysWrite::Done { etag: 4, count: 1 }
    );
    assert_eq!(
        s.delete_room_keys("@a:x", 1, KeyScope::All).await.unwrap(),
        KeysWrite::Done { etag: 1, count: 0 }
    );
    assert_eq!(
        s.delete_room_keys("@a:x", 9, KeyScope::All).await.unwrap(),
        KeysWrite::NoSuchVersion
    );
    assert_eq!(
        s.delete_room_keys("@a:x", 2, KeyScope::All).await.unwrap(),
        KeysWrite::Done { etag: 5, count: 0 }
    );

    // Deleting a version takes its keys with it.
    s.upsert_room_keys("@a:x", 2, &first, lower_index)
        .await
        .unwrap();
    assert!(s.delete_backup_version("@a:x", 2).await.unwrap());
    assert!(
        s.select_room_keys("@a:x", 2, KeyScope::All)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.upsert_room_keys("@a:x", 2, &first, lower_index)
            .await
            .unwrap(),
        KeysWrite::NoSuchVersion
    );
    assert_eq!(
        s.upsert_room_keys("@a:x", 1, &first, lower_index)
            .await
            .unwrap(),
        KeysWrite::Done { etag: 2, count: 3 },
        "version 1 is current again"
    );
}
both!(room_keys_follow_the_rule_and_raise_the_etag);
