//! Accounts: registration, login, tokens, devices, profile.

use ganglion_tests::{Backend, TestServer};
use serde_json::json;

use crate::{all3, both};

async fn register_login_logout(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let who = alice.get("/_matrix/client/v3/account/whoami").await.ok();
    assert_eq!(who["user_id"], alice.user_id);
    assert_eq!(who["device_id"], alice.device_id);

    // The same username again is taken.
    let local = alice
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .expect("localpart")
        .to_owned();
    let anon = srv.client();
    let r = anon
        .post(
            "/_matrix/client/v3/register",
            json!({ "username": local, "password": "x", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    r.expect_err(400, "M_USER_IN_USE");
    anon.get(&format!(
        "/_matrix/client/v3/register/available?username={local}"
    ))
    .await
    .expect_err(400, "M_USER_IN_USE");

    // Password login with each identifier form.
    for ident in [
        json!({ "type": "m.id.user", "user": local }),
        json!({ "type": "m.id.user", "user": alice.user_id }),
    ] {
        let r = anon.post("/_matrix/client/v3/login", json!({ "type": "m.login.password", "identifier": ident, "password": "password-123" })).await.ok();
        assert_eq!(r["user_id"], alice.user_id);
    }
    anon.post(
        "/_matrix/client/v3/login",
        json!({ "type": "m.login.password", "user": local, "password": "wrong" }),
    )
    .await
    .expect_err(403, "M_FORBIDDEN");

    // Profile.
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            json!({ "displayname": "Alice" }),
        )
        .await
        .ok();
    let p = anon
        .get(&format!("/_matrix/client/v3/profile/{}", alice.user_id))
        .await
        .ok();
    assert_eq!(p["displayname"], "Alice");

    // Devices.
    let devs = alice.get("/_matrix/client/v3/devices").await.ok();
    assert!(devs["devices"].as_array().expect("devices").len() >= 3);

    // Logout kills the token.
    alice
        .post("/_matrix/client/v3/logout", json!({}))
        .await
        .ok();
    let r = alice.get("/_matrix/client/v3/account/whoami").await;
    r.expect_err(401, "M_UNKNOWN_TOKEN");
    assert_eq!(r.body["soft_logout"], false);
    srv.cleanup().await;
}
all3!(register_login_logout);

async fn closed_registration(b: Backend) {
    let srv = TestServer::start_with(b, "[registration]\nenabled = false\n").await;
    let r = srv
        .client()
        .post(
            "/_matrix/client/v3/register",
            json!({ "username": "bob", "password": "pw" }),
        )
        .await;
    r.expect_err(403, "M_FORBIDDEN");
    srv.cleanup().await;
}
both!(closed_registration);
