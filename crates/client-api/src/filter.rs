//! Filters (spec: Client-Server API, "Filtering").

use axum::{Json, Router, extract::State};
use ganglion_core::Error;
use ganglion_http::{ApiResult, Authed, route};
use ruma::api::client::filter::{create_filter, get_filter};
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the filter routes.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<create_filter::v3::Request, _, _, _>(r, create_filter);
    route::<get_filter::v3::Request, _, _, _>(r, get_filter)
}

/// `POST /_matrix/client/v3/user/{userId}/filter`.
pub async fn create_filter(
    State(api): State<ClientApi>,
    req: Authed<create_filter::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    let filter =
        serde_json::to_value(&req.body.filter).map_err(|e| Error::bad_json(e.to_string()))?;
    let id = api
        .user_data
        .create_filter(req.user().as_str(), &filter)
        .await?;
    Ok(Json(json!({ "filter_id": id })))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`.
pub async fn get_filter(
    State(api): State<ClientApi>,
    req: Authed<get_filter::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    Ok(Json(
        api.user_data
            .filter(req.user().as_str(), &req.body.filter_id)
            .await?,
    ))
}
