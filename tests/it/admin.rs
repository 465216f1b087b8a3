//! Shared-secret registration, registration tokens, refresh tokens, password changes,
//! deactivation and device deletion with user-interactive auth.

use ganglion_tests::{Backend, Client, TestServer, client::enc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;

use crate::{all3, both};

fn mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let mut m = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("hmac key");
    m.update(
        format!(
            "{nonce}\0{user}\0{password}\0{}",
            if admin { "admin" } else { "notadmin" }
        )
        .as_bytes(),
    );
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn shared_secret_registration(b: Backend) {
    let srv = TestServer::start(b).await;
    let anon = srv.client();
    let nonce = anon.get("/_synapse/admin/v1/register").await.ok()["nonce"]
        .as_str()
        .expect("nonce")
        .to_owned();
    let bad =
        json!({ "nonce": nonce, "username": "root", "password": "pw", "admin": true, "mac": "00" });
    anon.post("/_synapse/admin/v1/register", bad)
        .await
        .expect_err(403, "M_FORBIDDEN");
    let nonce = anon.get("/_synapse/admin/v1/register").await.ok()["nonce"]
        .as_str()
        .expect("nonce")
        .to_owned();
    let body = json!({ "nonce": nonce, "username": "root", "password": "pw", "admin": true, "mac": mac("test-secret", &nonce, "root", "pw", true) });
    let reg = anon
        .post("/_synapse/admin/v1/register", body.clone())
        .await
        .ok();
    assert_eq!(reg["user_id"], format!("@root:localhost:{}", srv.port));
    // A nonce is single-use.
    assert_ne!(
        anon.post("/_synapse/admin/v1/register", body).await.status,
        200
    );

    // The admin manages registration tokens.
    let mut admin = srv.client();
    admin.token = reg["access_token"].as_str().map(str::to_owned);
    let t = admin
        .post(
            "/_synapse/admin/v1/registration_tokens/new",
            json!({ "token": "letmein", "uses_allowed": 1 }),
        )
        .await
        .ok();
    assert_eq!(t["token"], "letmein");
    let list = admin
        .get("/_synapse/admin/v1/registration_tokens")
        .await
        .ok();
    assert_eq!(
        list["registration_tokens"]
            .as_array()
            .expect("tokens")
            .len(),
        1
    );
    let plain = srv.user("pleb").await;
    plain
        .get("/_synapse/admin/v1/registration_tokens")
        .await
        .expect_err(403, "M_FORBIDDEN");
    srv.cleanup().await;
}
all3!(shared_secret_registration);

async fn registration_requires_token(b: Backend) {
    let srv = TestServer::start_with(
        b,
        "[registration]\nenabled = true\nrequires_token = true\nshared_secret = \"test-secret\"\n",
    )
    .await;
    let anon = srv.client();
    let first = anon
        .post(
            "/_matrix/client/v3/register",
            json!({ "username": "tok", "password": "pw" }),
        )
        .await;
    assert_eq!(first.status, 401);
    let flows = first.body["flows"].to_string();
    assert!(flows.contains("m.login.registration_token"), "{flows}");
    assert!(!flows.contains("m.login.dummy"), "{flows}");
    let session = first.body["session"].as_str().expect("session").to_owned();
    let r = anon
        .post("/_matrix/client/v3/register", json!({ "username": "tok", "password": "pw", "auth": { "type": "m.login.registration_token", "token": "nope", "session": session } }))
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let v = anon
        .get("/_matrix/client/v1/register/m.login.registration_token/validity?token=nope")
        .await
        .ok();
    assert_eq!(v["valid"], false);
    srv.cleanup().await;
}
both!(registration_requires_token);

async fn uia_password(
    c: &Client,
    path: &str,
    method: reqwest::Method,
    mut body: Value,
) -> ganglion_tests::Resp {
    let first = c.req(method.clone(), path, Some(body.clone())).await;
    assert_eq!(first.status, 401, "{}", first.body);
    let session = first.body["session"].as_str().expect("session").to_owned();
    body["auth"] = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": c.user_id }, "password": "password-123", "session": session });
    c.req(method, path, Some(body)).await
}

async fn tokens_passwords_devices(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let local = alice
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .expect("local")
        .to_owned();
    // Refresh tokens rotate and are single-use.
    let anon = srv.client();
    let login = anon
        .post("/_matrix/client/v3/login", json!({ "type": "m.login.password", "user": local, "password": "password-123", "refresh_token": true }))
        .await
        .ok();
    let refresh = login["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    assert!(login["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0));
    let next = anon
        .post(
            "/_matrix/client/v3/refresh",
            json!({ "refresh_token": refresh }),
        )
        .await
        .ok();
    assert!(next["access_token"].is_string());
    anon.post(
        "/_matrix/client/v3/refresh",
        json!({ "refresh_token": refresh }),
    )
    .await
    .expect_err(401, "M_UNKNOWN_TOKEN");

    // Deleting a device needs UIA, and kills its token.
    let mut second = srv.client();
    second.token = login["access_token"].as_str().map(str::to_owned);
    let dev = login["device_id"].as_str().expect("device").to_owned();
    let path = format!("/_matrix/client/v3/devices/{}", enc(&dev));
    let _ = second;
    uia_password(&alice, &path, reqwest::Method::DELETE, json!({}))
        .await
        .ok();
    let mut gone = srv.client();
    gone.token = next["access_token"].as_str().map(str::to_owned);
    gone.get("/_matrix/client/v3/account/whoami")
        .await
        .expect_err(401, "M_UNKNOWN_TOKEN");

    // Password change, then the new password works and the old does not.
    uia_password(
        &alice,
        "/_matrix/client/v3/account/password",
        reqwest::Method::POST,
        json!({ "new_password": "new-pass-456", "logout_devices": false }),
    )
    .await
    .ok();
    anon.post(
        "/_matrix/client/v3/login",
        json!({ "type": "m.login.password", "user": local, "password": "password-123" }),
    )
    .await
    .expect_err(403, "M_FORBIDDEN");
    anon.post(
        "/_matrix/client/v3/login",
        json!({ "type": "m.login.password", "user": local, "password": "new-pass-456" }),
    )
    .await
    .ok();

    // Deactivation leaves rooms and locks the account.
    let bob = srv.user("bob").await;
    let room = bob.create_room(json!({ "preset": "public_chat" })).await;
    alice.join(&room).await;
    let first = alice
        .post("/_matrix/client/v3/account/deactivate", json!({}))
        .await;
    let session = first.body["session"].as_str().expect("session").to_owned();
    alice
        .post(
            "/_matrix/client/v3/account/deactivate",
            json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": alice.user_id }, "password": "new-pass-456", "session": session } }),
        )
        .await
        .ok();
    anon.post(
        "/_matrix/client/v3/login",
        json!({ "type": "m.login.password", "user": local, "password": "new-pass-456" }),
    )
    .await
    .expect_err(403, "M_USER_DEACTIVATED");
    let members = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await
        .ok();
    assert!(
        members["joined"].get(&alice.user_id).is_none(),
        "deactivated user left the room"
    );
    srv.cleanup().await;
}
all3!(tokens_passwords_devices);
