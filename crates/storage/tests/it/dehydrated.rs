//! Dehydrated-device storage: one per user, replaced whole, never over a device someone
//! is logged in on, gone with the device; and the non-acknowledging to-device read.

use ganglion_storage::{Error, Store, accounts::NewLogin, dehydrated::DehydratedDevice};

use super::Fixture;

fn device(id: &str, data: &str) -> DehydratedDevice {
    DehydratedDevice {
        device_id: id.into(),
        device_data: format!(r#"{{"algorithm":"a","d":"{data}"}}"#),
    }
}

/// Device ids of `user`.
async fn devices(s: &Store, user: &str) -> Vec<String> {
    s.select_devices(user)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect()
}

/// One to-device message for each of `devices` of `user` at `stream_id`.
async fn message(s: &Store, stream_id: i64, user: &str, devices: &[&str]) {
    let rows: Vec<(String, String, String)> = devices
        .iter()
        .map(|d| {
            (
                user.to_owned(),
                (*d).to_owned(),
                format!(r#"{{"n":{stream_id}}}"#),
            )
        })
        .collect();
    s.insert_to_device_batch(
        stream_id,
        ("@b:x", "B"),
        &format!("t{stream_id}"),
        "m.test",
        &rows,
        &[],
    )
    .await
    .unwrap();
}

async fn dehydrated_devices_replace_and_go(s: &Store) {
    let user = "@a:x";
    s.insert_user(user, Some("hash"), false).await.unwrap();
    s.insert_login(NewLogin {
        user_id: user,
        device_id: "PHONE",
        display_name: None,
        ip: None,
        access_token: "tok-phone",
        refresh_token: None,
        expires_ts: None,
    })
    .await
    .unwrap();
    assert_eq!(s.select_dehydrated_device(user).await.unwrap(), None);

    // The first one: a device row named as asked.
    let d1 = device("D1", "one");
    assert_eq!(
        s.replace_dehydrated_device(user, &d1, Some("Dehydrated"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.select_dehydrated_device(user).await.unwrap(),
        Some(d1.clone())
    );
    let row = s.select_device(user, "D1").await.unwrap().unwrap();
    assert_eq!(row.display_name.as_deref(), Some("Dehydrated"));
    s.upsert_device_keys(user, "D1", r#"{"k":1}"#)
        .await
        .unwrap();

    // Messages are read after a position, up to another, without being acknowledged.
    for n in 1..=5 {
        message(s, n, user, &["D1", "PHONE"]).await;
    }
    let ids = |rows: Vec<(i64, String, String, String)>| -> Vec<i64> {
        rows.into_iter().map(|r| r.0).collect()
    };
    assert_eq!(
        ids(s
            .select_to_device_between(user, "D1", 0, 5, 2)
            .await
            .unwrap()),
        [1, 2]
    );
    assert_eq!(
        ids(s
            .select_to_device_between(user, "D1", 2, 5, 10)
            .await
            .unwrap()),
        [3, 4, 5]
    );
    assert_eq!(
        ids(s
            .select_to_device_between(user, "D1", 2, 4, 10)
            .await
            .unwrap()),
        [3, 4]
    );
    assert_eq!(
        ids(s
            .select_to_device_between(user, "D1", 0, 5, 10)
            .await
            .unwrap())
        .len(),
        5
    );

    // A logged-in device is never taken over, and the refused upload changes nothing.
    let err = s
        .replace_dehydrated_device(user, &device("PHONE", "x"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert_eq!(
        s.select_dehydrated_device(user).await.unwrap(),
        Some(d1.clone())
    );
    assert!(s.select_token_owner("tok-phone").await.unwrap().is_some());

    // A new one replaces the old, which goes with its keys and its messages; the
    // other device's messages stay.
    let d2 = device("D2", "two");
    assert_eq!(
        s.replace_dehydrated_device(user, &d2, None).await.unwrap(),
        Some("D1".into())
    );
    assert_eq!(devices(s, user).await, ["D2", "PHONE"]);
    assert!(
        s.select_device_keys(&[user.into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.select_to_device_between(user, "D1", 0, 5, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.select_to_device_between(user, "PHONE", 0, 5, 10)
            .await
            .unwrap()
            .len(),
        5
    );

    // Uploading under the same id again starts that device afresh.
    message(s, 6, user, &["D2"]).await;
    let d2b = device("D2", "two-again");
    assert_eq!(
        s.replace_dehydrated_device(user, &d2b, None).await.unwrap(),
        Some("D2".into())
    );
    assert_eq!(s.select_dehydrated_device(user).await.unwrap(), Some(d2b));
    assert!(
        s.select_to_device_between(user, "D2", 0, 6, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Deleted by hand: then there is none, and deleting again finds none.
    assert_eq!(
        s.delete_dehydrated_device(user).await.unwrap(),
        Some("D2".into())
    );
    assert_eq!(s.select_dehydrated_device(user).await.unwrap(), None);
    assert_eq!(s.delete_dehydrated_device(user).await.unwrap(), None);
    assert_eq!(devices(s, user).await, ["PHONE"]);

    // Deleted as a device (`/delete_devices`): it stops being the dehydrated device.
    s.replace_dehydrated_device(user, &device("D3", "three"), None)
        .await
        .unwrap();
    s.delete_devices(user, &["D3".into()]).await.unwrap();
    assert_eq!(s.select_dehydrated_device(user).await.unwrap(), None);

    // Per user: another user's dehydrated device may even share the id.
    s.replace_dehydrated_device("@c:x", &device("D1", "c"), None)
        .await
        .unwrap();
    assert_eq!(s.select_dehydrated_device(user).await.unwrap(), None);
    assert_eq!(
        s.select_dehydrated_device("@c:x").await.unwrap(),
        Some(device("D1", "c"))
    );
}
both!(dehydrated_devices_replace_and_go);
