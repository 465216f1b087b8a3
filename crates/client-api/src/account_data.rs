//! Client config (account data) and room tags (spec: Client-Server API, "Client Config",
//! "Room Tagging").

use axum::{Json, Router, extract::State};
use ganglion_core::{Error, ErrorKind};
use ganglion_http::{ApiResult, Authed, route};
use ruma::api::client::{
    config::{
        get_global_account_data, get_room_account_data, set_global_account_data,
        set_room_account_data,
    },
    tag::{create_tag, delete_tag, get_tags},
};
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the account-data and tag routes.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<set_global_account_data::v3::Request, _, _, _>(r, set_global_account_data);
    let r = route::<get_global_account_data::v3::Request, _, _, _>(r, get_global_account_data);
    let r = route::<set_room_account_data::v3::Request, _, _, _>(r, set_room_account_data);
    let r = route::<get_room_account_data::v3::Request, _, _, _>(r, get_room_account_data);
    let r = route::<create_tag::v3::Request, _, _, _>(r, create_tag);
    let r = route::<delete_tag::v3::Request, _, _, _>(r, delete_tag);
    route::<get_tags::v3::Request, _, _, _>(r, get_tags)
}

fn server_managed(kind: &str) -> ApiResult<()> {
    // Spec: these types are managed by their own endpoints.
    if kind == "m.fully_read" || kind == "m.push_rules" {
        return Err(Error::new(
            ErrorKind::MethodNotAllowed,
            format!("{kind} cannot be set through this endpoint"),
        )
        .into());
    }
    Ok(())
}

fn content(raw: &ruma::serde::Raw<impl Sized>) -> ApiResult<Value> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()).into())
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`.
pub async fn set_global_account_data(
    State(api): State<ClientApi>,
    req: Authed<set_global_account_data::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    server_managed(&kind)?;
    api.user_data
        .set_account_data(req.user().as_str(), "", &kind, &content(&req.body.data)?)
        .await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`.
pub async fn get_global_account_data(
    State(api): State<ClientApi>,
    req: Authed<get_global_account_data::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    Ok(Json(
        api.user_data
            .account_data(req.user().as_str(), "", &req.body.event_type.to_string())
            .await?,
    ))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`.
pub async fn set_room_account_data(
    State(api): State<ClientApi>,
    req: Authed<set_room_account_data::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    server_managed(&kind)?;
    api.user_data
        .set_account_data(
            req.user().as_str(),
            req.body.room_id.as_str(),
            &kind,
            &content(&req.body.data)?,
        )
        .await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`.
pub async fn get_room_account_data(
    State(api): State<ClientApi>,
    req: Authed<get_room_account_data::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    Ok(Json(
        api.user_data
            .account_data(
                req.user().as_str(),
                req.body.room_id.as_str(),
                &req.body.event_type.to_string(),
            )
            .await?,
    ))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`.
pub async fn create_tag(
    State(api): State<ClientApi>,
    req: Authed<create_tag::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    let info =
        serde_json::to_value(&req.body.tag_info).map_err(|e| Error::bad_json(e.to_string()))?;
    api.user_data
        .set_tag(
            req.user().as_str(),
            req.body.room_id.as_str(),
            &req.body.tag,
            info,
        )
        .await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`.
pub async fn delete_tag(
    State(api): State<ClientApi>,
    req: Authed<delete_tag::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    api.user_data
        .delete_tag(
            req.user().as_str(),
            req.body.room_id.as_str(),
            &req.body.tag,
        )
        .await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`.
pub async fn get_tags(
    State(api): State<ClientApi>,
    req: Authed<get_tags::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    Ok(Json(
        api.user_data
            .tags(req.user().as_str(), req.body.room_id.as_str())
            .await?,
    ))
}
