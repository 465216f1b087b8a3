//! Spec module `backup`: the thin handlers of `/room_keys/*`. Each extracts, calls one
//! [`Backup`](super::Backup) method on the caller's own backup, and shapes the answer.

use axum::{Router, extract::State};
use ganglion_http::{ApiResult, Authed, RumaResponse, route};
use ruma::api::client::backup::{
    RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
    create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
    delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
    get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version,
};

use super::KeyScope;
use crate::E2eeApi;

/// Registers every key backup endpoint on `r`.
pub(crate) fn routes(r: Router<E2eeApi>) -> Router<E2eeApi> {
    let mut r = r;
    r = route::<create_backup_version::v3::Request, _, _, _>(r, create_backup_version);
    r = route::<get_latest_backup_info::v3::Request, _, _, _>(r, get_latest_backup_info);
    r = route::<get_backup_info::v3::Request, _, _, _>(r, get_backup_info);
    r = route::<update_backup_version::v3::Request, _, _, _>(r, update_backup_version);
    r = route::<delete_backup_version::v3::Request, _, _, _>(r, delete_backup_version);

    r = route::<add_backup_keys::v3::Request, _, _, _>(r, add_backup_keys);
    r = route::<get_backup_keys::v3::Request, _, _, _>(r, get_backup_keys);
    r = route::<delete_backup_keys::v3::Request, _, _, _>(r, delete_backup_keys);
    r = route::<add_backup_keys_for_room::v3::Request, _, _, _>(r, add_backup_keys_for_room);
    r = route::<get_backup_keys_for_room::v3::Request, _, _, _>(r, get_backup_keys_for_room);
    r = route::<delete_backup_keys_for_room::v3::Request, _, _, _>(r, delete_backup_keys_for_room);
    r = route::<add_backup_keys_for_session::v3::Request, _, _, _>(r, add_backup_keys_for_session);
    r = route::<get_backup_keys_for_session::v3::Request, _, _, _>(r, get_backup_keys_for_session);
    r = route::<delete_backup_keys_for_session::v3::Request, _, _, _>(
        r,
        delete_backup_keys_for_session,
    );
    r
}

/// `POST /_matrix/client/v3/room_keys/version`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3room_keysversion>
async fn create_backup_version(
    State(api): State<E2eeApi>,
    req: Authed<create_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<create_backup_version::v3::Response>> {
    let version = api
        .backup
        .create_version(req.user(), &req.body.algorithm)
        .await?;
    Ok(RumaResponse(create_backup_version::v3::Response::new(
        version,
    )))
}

/// `GET /_matrix/client/v3/room_keys/version`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keysversion>
async fn get_latest_backup_info(
    State(api): State<E2eeApi>,
    req: Authed<get_latest_backup_info::v3::Request>,
) -> ApiResult<RumaResponse<get_latest_backup_info::v3::Response>> {
    let info = api.backup.latest_version(req.user()).await?;
    Ok(RumaResponse(get_latest_backup_info::v3::Response::new(
        info.algorithm,
        info.count,
        info.etag,
        info.version,
    )))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keysversionversion>
async fn get_backup_info(
    State(api): State<E2eeApi>,
    req: Authed<get_backup_info::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_info::v3::Response>> {
    let info = api.backup.version(req.user(), &req.body.version).await?;
    Ok(RumaResponse(get_backup_info::v3::Response::new(
        info.algorithm,
        info.count,
        info.etag,
        info.version,
    )))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keysversionversion>
async fn update_backup_version(
    State(api): State<E2eeApi>,
    req: Authed<update_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<update_backup_version::v3::Response>> {
    api.backup
        .update_version(req.user(), &req.body.version, &req.body.algorithm)
        .await?;
    Ok(RumaResponse(update_backup_version::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keysversionversion>
async fn delete_backup_version(
    State(api): State<E2eeApi>,
    req: Authed<delete_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_version::v3::Response>> {
    api.backup
        .delete_version(req.user(), &req.body.version)
        .await?;
    Ok(RumaResponse(delete_backup_version::v3::Response::new()))
}

/// `PUT /_matrix/client/v3/room_keys/keys`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeys>
async fn add_backup_keys(
    State(api): State<E2eeApi>,
    req: Authed<add_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys::v3::Response>> {
    let keys = req
        .body
        .rooms
        .iter()
        .flat_map(|(room, backup)| {
            backup
                .sessions
                .iter()
                .map(move |(session, key)| (&**room, session.as_str(), key))
        })
        .collect();
    let written = api
        .backup
        .put_keys(req.user(), &req.body.version, keys)
        .await?;
    Ok(RumaResponse(add_backup_keys::v3::Response::new(
        written.etag,
        written.count,
    )))
}

/// `GET /_matrix/client/v3/room_keys/keys`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeys>
async fn get_backup_keys(
    State(api): State<E2eeApi>,
    req: Authed<get_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys::v3::Response>> {
    let rooms = api.backup.all_keys(req.user(), &req.body.version).await?;
    Ok(RumaResponse(get_backup_keys::v3::Response::new(
        rooms
            .into_iter()
            .map(|(room, sessions)| (room, RoomKeyBackup::new(sessions)))
            .collect(),
    )))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeys>
async fn delete_backup_keys(
    State(api): State<E2eeApi>,
    req: Authed<delete_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys::v3::Response>> {
    let left = api
        .backup
        .delete_keys(req.user(), &req.body.version, KeyScope::All)
        .await?;
    Ok(RumaResponse(delete_backup_keys::v3::Response::new(
        left.etag, left.count,
    )))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeysroomid>
async fn add_backup_keys_for_room(
    State(api): State<E2eeApi>,
    req: Authed<add_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys_for_room::v3::Response>> {
    let room = &*req.body.room_id;
    let keys = req
        .body
        .sessions
        .iter()
        .map(|(session, key)| (room, session.as_str(), key))
        .collect();
    let written = api
        .backup
        .put_keys(req.user(), &req.body.version, keys)
        .await?;
    Ok(RumaResponse(add_backup_keys_for_room::v3::Response::new(
        written.etag,
        written.count,
    )))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeysroomid>
async fn get_backup_keys_for_room(
    State(api): State<E2eeApi>,
    req: Authed<get_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys_for_room::v3::Response>> {
    let sessions = api
        .backup
        .room_keys(req.user(), &req.body.version, &req.body.room_id)
        .await?;
    Ok(RumaResponse(get_backup_keys_for_room::v3::Response::new(
        sessions,
    )))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeysroomid>
async fn delete_backup_keys_for_room(
    State(api): State<E2eeApi>,
    req: Authed<delete_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys_for_room::v3::Response>> {
    let left = api
        .backup
        .delete_keys(
            req.user(),
            &req.body.version,
            KeyScope::Room(req.body.room_id.as_str()),
        )
        .await?;
    Ok(RumaResponse(
        delete_backup_keys_for_room::v3::Response::new(left.etag, left.count),
    ))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeysroomidsessionid>
async fn add_backup_keys_for_session(
    State(api): State<E2eeApi>,
    req: Authed<add_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys_for_session::v3::Response>> {
    let b = &req.body;
    let keys = vec![(&*b.room_id, b.session_id.as_str(), &b.session_data)];
    let written = api.backup.put_keys(req.user(), &b.version, keys).await?;
    Ok(RumaResponse(
        add_backup_keys_for_session::v3::Response::new(written.etag, written.count),
    ))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeysroomidsessionid>
async fn get_backup_keys_for_session(
    State(api): State<E2eeApi>,
    req: Authed<get_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys_for_session::v3::Response>> {
    let b = &req.body;
    let key = api
        .backup
        .session_key(req.user(), &b.version, &b.room_id, &b.session_id)
        .await?;
    Ok(RumaResponse(
        get_backup_keys_for_session::v3::Response::new(key),
    ))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeysroomidsessionid>
async fn delete_backup_keys_for_session(
    State(api): State<E2eeApi>,
    req: Authed<delete_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys_for_session::v3::Response>> {
    let b = &req.body;
    let scope = KeyScope::Session(b.room_id.as_str(), &b.session_id);
    let left = api
        .backup
        .delete_keys(req.user(), &b.version, scope)
        .await?;
    Ok(RumaResponse(
        delete_backup_keys_for_session::v3::Response::new(left.etag, left.count),
    ))
}
