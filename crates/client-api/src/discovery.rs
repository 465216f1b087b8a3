//! Server discovery and capabilities (spec: Client-Server API, "Server Discovery",
//! "API Standards" versions, "Capabilities negotiation").

use axum::{Json, Router, extract::State};
use ganglion_http::{ApiResult, Authed, Ruma, route};
use ruma::api::client::discovery::{discover_homeserver, get_capabilities, get_supported_versions};
use serde_json::{Value, json};

use crate::ClientApi;

/// The spec versions we answer to.
pub const VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
];

/// Registers the discovery routes.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<get_supported_versions::Request, _, _, _>(r, get_supported_versions);
    let r = route::<discover_homeserver::Request, _, _, _>(r, discover_homeserver);
    route::<get_capabilities::v3::Request, _, _, _>(r, get_capabilities)
}

/// `GET /_matrix/client/versions`. Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientversions>
pub async fn get_supported_versions(_req: Ruma<get_supported_versions::Request>) -> Json<Value> {
    Json(json!({
        "versions": VERSIONS,
        "unstable_features": {
            "org.matrix.msc2285.stable": true,
            "org.matrix.msc3827.stable": true,
            // Dehydrated devices (crates/e2ee/src/dehydrated.rs).
            "org.matrix.msc3814": true,
        },
    }))
}

/// `GET /.well-known/matrix/client`. Spec: <https://spec.matrix.org/v1.19/client-server-api/#getwell-knownmatrixclient>
pub async fn discover_homeserver(
    State(api): State<ClientApi>,
    _req: Ruma<discover_homeserver::Request>,
) -> Json<Value> {
    Json(json!({ "m.homeserver": { "base_url": api.config.public_baseurl } }))
}

/// `GET /_matrix/client/v3/capabilities`. Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3capabilities>
pub async fn get_capabilities(
    State(api): State<ClientApi>,
    _req: Authed<get_capabilities::v3::Request>,
) -> ApiResult<Json<Value>> {
    let mut available = serde_json::Map::new();
    for v in ["2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        available.insert(v.into(), json!("stable"));
    }
    Ok(Json(json!({
        "capabilities": {
            "m.change_password": { "enabled": true },
            "m.room_versions": { "default": api.config.default_room_version, "available": available },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
            "m.profile_fields": { "enabled": true, "allowed": ["displayname", "avatar_url"] },
        }
    })))
}
