//! Spaces (Client-Server API, "Spaces"): the hierarchy of a space-room.

use axum::{Json, Router, extract::State};
use ganglion_http::{ApiResult, Authed, route};
use ganglion_rooms::spaces::HierarchyQuery;
use ruma::api::client::space::get_hierarchy;
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the hierarchy route.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    route::<get_hierarchy::v1::Request, _, _, _>(r, get_hierarchy)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`: the rooms of the space the user
/// may see, among those this server is in (children only other servers know of are
/// left out). Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidhierarchy>
pub async fn get_hierarchy(
    State(api): State<ClientApi>,
    req: Authed<get_hierarchy::v1::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let q = HierarchyQuery {
        suggested_only: b.suggested_only,
        max_depth: b.max_depth.map(u64::from),
        limit: b.limit.map(u64::from),
        from: b.from.clone(),
    };
    let page = api
        .rooms
        .space_hierarchy(req.user(), &b.room_id, &q)
        .await?;
    let mut out = json!({ "rooms": page.rooms });
    if let Some(n) = page.next_batch {
        out["next_batch"] = json!(n);
    }
    Ok(Json(out))
}
