//! Discovery, CORS, unknown endpoints and methods.

use ganglion_tests::{Backend, TestServer};
use reqwest::Method;

use crate::all3;

async fn versions_and_errors(b: Backend) {
    let srv = TestServer::start(b).await;
    let c = srv.client();
    let v = c.get("/_matrix/client/versions").await.ok();
    assert!(
        v["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .any(|x| x == "v1.19")
    );
    let wk = c.get("/.well-known/matrix/client").await.ok();
    assert!(
        wk["m.homeserver"]["base_url"]
            .as_str()
            .expect("base_url")
            .starts_with("http")
    );

    c.get("/_matrix/client/v3/no_such_thing")
        .await
        .expect_err(404, "M_UNRECOGNIZED");
    c.req(Method::DELETE, "/_matrix/client/versions", None)
        .await
        .expect_err(405, "M_UNRECOGNIZED");
    c.get("/_matrix/client/v3/capabilities")
        .await
        .expect_err(401, "M_MISSING_TOKEN");

    // CORS preflight on any path.
    let r = ganglion_tests::http()
        .build()
        .expect("http client")
        .request(
            Method::OPTIONS,
            format!("{}/_matrix/client/v3/sync", srv.base),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );

    let alice = srv.user("alice").await;
    let caps = alice.get("/_matrix/client/v3/capabilities").await.ok();
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "11");
    srv.cleanup().await;
}
all3!(versions_and_errors);
