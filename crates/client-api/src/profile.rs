//! Profiles (spec: Client-Server API, "Profiles").

use axum::{Json, Router, extract::State};
use ganglion_core::Error;
use ganglion_http::{ApiResult, Authed, Ruma, route};
use ruma::api::client::profile::{
    delete_profile_field, get_profile, get_profile_field, set_profile_field,
};
use serde_json::{Map, Value, json};

use crate::ClientApi;

/// Registers the profile routes.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<get_profile::v3::Request, _, _, _>(r, get_profile);
    let r = route::<get_profile_field::v3::Request, _, _, _>(r, get_profile_field);
    let r = route::<set_profile_field::v3::Request, _, _, _>(r, set_profile_field);
    route::<delete_profile_field::v3::Request, _, _, _>(r, delete_profile_field)
}

fn profile_json(name: Option<String>, avatar: Option<String>) -> Value {
    let mut out = Map::new();
    if let Some(n) = name {
        out.insert("displayname".into(), json!(n));
    }
    if let Some(a) = avatar {
        out.insert("avatar_url".into(), json!(a));
    }
    Value::Object(out)
}

/// `GET /_matrix/client/v3/profile/{userId}`.
pub async fn get_profile(
    State(api): State<ClientApi>,
    req: Ruma<get_profile::v3::Request>,
) -> ApiResult<Json<Value>> {
    let (name, avatar) = api.user_data.profile_of(&req.0.user_id).await?;
    Ok(Json(profile_json(name, avatar)))
}

/// `GET /_matrix/client/v3/profile/{userId}/{keyName}`.
pub async fn get_profile_field(
    State(api): State<ClientApi>,
    req: Ruma<get_profile_field::v3::Request>,
) -> ApiResult<Json<Value>> {
    let (name, avatar) = api.user_data.profile_of(&req.0.user_id).await?;
    let field = req.0.field.as_str().to_owned();
    let value = match field.as_str() {
        "displayname" => name,
        "avatar_url" => avatar,
        _ => None,
    };
    match value {
        Some(v) => Ok(Json(json!({ field: v }))),
        None => Err(Error::not_found("profile field not set").into()),
    }
}

/// `PUT /_matrix/client/v3/profile/{userId}/{keyName}`.
pub async fn set_profile_field(
    State(api): State<ClientApi>,
    req: Authed<set_profile_field::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    let field = req.body.value.field_name().as_str().to_owned();
    let value = req.body.value.value();
    let text = match &*value {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => return Err(Error::bad_json("profile values must be strings").into()),
    };
    api.user_data
        .set_profile_field(req.user(), &field, text.as_deref())
        .await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/profile/{userId}/{keyName}`.
pub async fn delete_profile_field(
    State(api): State<ClientApi>,
    req: Authed<delete_profile_field::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    api.user_data
        .set_profile_field(req.user(), req.body.field.as_str(), None)
        .await?;
    Ok(Json(json!({})))
}
