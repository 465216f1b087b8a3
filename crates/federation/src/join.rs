//! Joining a room on another server (Server-Server API, "Joining Rooms"): make_join at
//! one of the servers given, fill in and sign the template, send_join, check every
//! event of the answer (reference-hash ids, signatures, content hashes) and store the
//! room.
//!
//! Not built yet: checking the returned state against the auth rules (the resident
//! server's signatures and the events' own are checked, not their authorisation),
//! restricted joins, partial state (`omit_members`), and rejoining a room we know.

use ganglion_core::{Error, ErrorKind, time::now_ms};
use ganglion_rooms::{Rooms, ServerKey};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId,
    UserId,
};
use serde_json::Value;

use crate::{client::FederationClient, keys::KeyRing, pdu};

/// The room versions we can join (1 has no state resolution in ruma).
const VERSIONS: [&str; 11] = ["2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/// Joins `user` (ours) to `room_id` through the first of `via` that answers.
pub async fn join_remote(
    client: &FederationClient,
    keys: &KeyRing,
    key: &ServerKey,
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    via: &[String],
) -> Result<OwnedRoomId, Error> {
    let query: String = VERSIONS
        .iter()
        .map(|v| format!("ver={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut last = Error::not_found("no server to join the room through");
    for server in via.iter().filter(|s| s.as_str() != client.origin()).take(5) {
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{query}",
            ganglion_http::percent_encode(room_id.as_str()),
            ganglion_http::percent_encode(user.as_str())
        );
        let template = match client.get(server, &path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e, "make_join failed");
                last = e.into();
                continue;
            }
        };
        match join_via(client, keys, key, rooms, room_id, server, &template).await {
            Ok(()) => return Ok(room_id.to_owned()),
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e.message, "send_join failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn join_via(
    client: &FederationClient,
    keys: &KeyRing,
    key: &ServerKey,
    rooms: &Rooms,
    room_id: &RoomId,
    server: &str,
    template: &Value,
) -> Result<(), Error> {
    let (version, rules, event) = signed_template(client, key, template)?;
    let event_id = pdu::event_id_of(&event, &rules)?;
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        ganglion_http::percent_encode(room_id.as_str()),
        ganglion_http::percent_encode(event_id.as_str())
    );
    let body = serde_json::to_value(CanonicalJsonValue::Object(event.clone()))
        .map_err(|e| Error::internal(e.to_string()))?;
    let answer = client
        .request(reqwest::Method::PUT, server, &path, Some(&body))
        .await
        .map_err(Error::from)?;
    let auth_chain = checked(keys, &rules, &answer, "auth_chain").await?;
    let state = checked(keys, &rules, &answer, "state").await?;
    if state.is_empty() {
        return Err(Error::bad_json("send_join gave no state"));
    }
    // The resident server may have added its signature to our join.
    let join = match answer
        .get("event")
        .cloned()
        .map(CanonicalJsonValue::try_from)
    {
        Some(Ok(CanonicalJsonValue::Object(obj)))
            if pdu::event_id_of(&obj, &rules).ok().as_ref() == Some(&event_id) =>
        {
            obj
        }
        _ => event,
    };
    rooms
        .bootstrap_remote_room(room_id, &version, auth_chain, state, (event_id, join))
        .await?;
    tracing::info!(room = %room_id, %server, "joined a remote room");
    Ok(())
}

/// The events of one list of a send_join answer, each checked: id, signatures, hash.
async fn checked(
    keys: &KeyRing,
    rules: &ruma::room_version_rules::RoomVersionRules,
    answer: &Value,
    list: &str,
) -> Result<Vec<(OwnedEventId, CanonicalJsonObject)>, Error> {
    let mut out: Vec<(OwnedEventId, CanonicalJsonObject)> = Vec::new();
    for v in answer
        .get(list)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(v) else {
            return Err(Error::bad_json(format!("a {list} entry is not an object")));
        };
        let id = pdu::event_id_of(&obj, rules)?;
        match pdu::verify(keys, &obj, rules).await? {
            ruma::signatures::Verified::All => out.push((id, obj)),
            ruma::signatures::Verified::Signatures => {
                return Err(Error::bad_json(format!(
                    "{id} does not match its content hash"
                )));
            }
        }
    }
    Ok(out)
}

/// Rejects an invite to a room we do not have (or leaves it) through the first of `via`
/// that answers: make_leave, our signed leave, send_leave v2; then keeps the leave in
/// the stub room, so the invite is gone for the user.
pub async fn leave_remote(
    client: &FederationClient,
    key: &ServerKey,
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    via: &[String],
) -> Result<(), Error> {
    let mut last = Error::not_found("no server to leave the room through");
    for server in via.iter().filter(|s| s.as_str() != client.origin()).take(5) {
        let path = format!(
            "/_matrix/federation/v1/make_leave/{}/{}",
            ganglion_http::percent_encode(room_id.as_str()),
            ganglion_http::percent_encode(user.as_str())
        );
        let template = match client.get(server, &path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e, "make_leave failed");
                last = e.into();
                continue;
            }
        };
        let (version, rules, event) = match signed_template(client, key, &template) {
            Ok(t) => t,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let event_id = pdu::event_id_of(&event, &rules)?;
        let path = format!(
            "/_matrix/federation/v2/send_leave/{}/{}",
            ganglion_http::percent_encode(room_id.as_str()),
            ganglion_http::percent_encode(event_id.as_str())
        );
        let body = serde_json::to_value(CanonicalJsonValue::Object(event.clone()))
            .map_err(|e| Error::internal(e.to_string()))?;
        match client
            .request(reqwest::Method::PUT, server, &path, Some(&body))
            .await
        {
            Ok(_) => {
                rooms
                    .store_remote_leave(room_id, &version, &event_id, event)
                    .await?;
                tracing::info!(room = %room_id, %server, "left a remote room");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e, "send_leave failed");
                last = e.into();
            }
        }
    }
    Err(last)
}

/// Knocks on a room we do not have through the first of `via` that answers:
/// make_knock (with the versions we support), our signed knock, send_knock; then keeps
/// the knock, with the stripped state the server returned, in a stub room.
pub async fn knock_remote(
    client: &FederationClient,
    key: &ServerKey,
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    via: &[String],
) -> Result<(), Error> {
    let query: String = VERSIONS
        .iter()
        .map(|v| format!("ver={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut last = Error::not_found("no server to knock through");
    for server in via.iter().filter(|s| s.as_str() != client.origin()).take(5) {
        let path = format!(
            "/_matrix/federation/v1/make_knock/{}/{}?{query}",
            ganglion_http::percent_encode(room_id.as_str()),
            ganglion_http::percent_encode(user.as_str())
        );
        let template = match client.get(server, &path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e, "make_knock failed");
                last = e.into();
                continue;
            }
        };
        let (version, rules, event) = signed_template(client, key, &template)?;
        let event_id = pdu::event_id_of(&event, &rules)?;
        let path = format!(
            "/_matrix/federation/v1/send_knock/{}/{}",
            ganglion_http::percent_encode(room_id.as_str()),
            ganglion_http::percent_encode(event_id.as_str())
        );
        let body = serde_json::to_value(CanonicalJsonValue::Object(event.clone()))
            .map_err(|e| Error::internal(e.to_string()))?;
        match client
            .request(reqwest::Method::PUT, server, &path, Some(&body))
            .await
        {
            Ok(answer) => {
                let stripped = answer
                    .get("knock_room_state")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                rooms
                    .store_remote_knock(room_id, &version, &event_id, event, stripped)
                    .await?;
                tracing::info!(room = %room_id, %server, "knocked on a remote room");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e, "send_knock failed");
                last = e.into();
            }
        }
    }
    Err(last)
}

/// A make_join or make_leave template filled in and signed: its room version, the
/// version's rules and the event.
fn signed_template(
    client: &FederationClient,
    key: &ServerKey,
    template: &Value,
) -> Result<
    (
        RoomVersionId,
        ruma::room_version_rules::RoomVersionRules,
        CanonicalJsonObject,
    ),
    Error,
> {
    let version = template
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1");
    let version = RoomVersionId::try_from(version)
        .map_err(|_| Error::new(ErrorKind::IncompatibleRoomVersion, "unknown room version"))?;
    let rules = version.rules().ok_or_else(|| {
        Error::new(
            ErrorKind::IncompatibleRoomVersion,
            format!("room version {version} is not supported"),
        )
    })?;
    let Some(Ok(CanonicalJsonValue::Object(mut event))) = template
        .get("event")
        .cloned()
        .map(CanonicalJsonValue::try_from)
    else {
        return Err(Error::bad_json("the template has no event"));
    };
    event.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(now_ms().try_into().unwrap_or_default()),
    );
    event.remove("signatures");
    event.remove("hashes");
    event.remove("unsigned");
    ruma::signatures::hash_and_sign_event(client.origin(), &key.pair, &mut event, &rules.redaction)
        .map_err(|e| Error::internal(format!("cannot sign our event: {e}")))?;
    Ok((version, rules, event))
}
