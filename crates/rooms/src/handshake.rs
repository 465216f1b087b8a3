//! Joining a room on another server (Server-Server API, "Joining Rooms"): make_join at
//! one of the servers given, fill in and sign the template, send_join, check every
//! event of the answer (reference-hash ids, signatures, content hashes) and store the
//! room.
//!
//! Leaves (rejecting an invite to a room we do not have) and knocks go through the same
//! handshake. Which of our users' joins, leaves and knocks take this path is decided in
//! [`crate::local_or_remote`].
//!
//! Not built yet: partial state (`omit_members`).

use ganglion_core::{Error, ErrorKind, percent::percent_encode, time::now_ms};
use ganglion_federation_client::{Federation, FederationClient, KeyRing, Method, pdu};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId,
    UserId,
};
use serde_json::Value;

use crate::Rooms;

/// The room versions we can join (1 has no state resolution in ruma).
const VERSIONS: [&str; 11] = ["2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/// Which membership handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Join,
    Leave,
    Knock,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::Knock => "knock",
        }
    }

    /// The API version of its `send_*` endpoint.
    fn send_version(self) -> &'static str {
        match self {
            Kind::Knock => "v1",
            Kind::Join | Kind::Leave => "v2",
        }
    }
}

/// Our event of a membership handshake, signed: its room version and rules, its id.
struct Signed {
    version: RoomVersionId,
    rules: ruma::room_version_rules::RoomVersionRules,
    event_id: OwnedEventId,
    event: CanonicalJsonObject,
}

/// A membership handshake with a resident server (Server-Server API: joins, leaves,
/// knocks): `make_{kind}` at the first of `via` (ours left out, at most 5) that answers,
/// our signed event from its template, then `send_{kind}` and `finish` with the answer. A failure at one server moves on to the next.
async fn handshake(
    client: &FederationClient,
    room_id: &RoomId,
    user: &UserId,
    via: &[String],
    handshake: Kind,
) -> Result<(Signed, Value), Error> {
    let (kind, send_version) = (handshake.name(), handshake.send_version());
    // Joins and knocks say which room versions we support.
    let query = if handshake == Kind::Leave {
        String::new()
    } else {
        let vers: Vec<String> = VERSIONS.iter().map(|v| format!("ver={v}")).collect();
        format!("?{}", vers.join("&"))
    };
    let mut last = Error::not_found(format!("no server to {kind} the room through"));
    for server in via.iter().filter(|s| s.as_str() != client.origin()).take(5) {
        let path = format!(
            "/_matrix/federation/v1/make_{kind}/{}/{}{query}",
            percent_encode(room_id.as_str()),
            percent_encode(user.as_str())
        );
        let template = match client.get(server, &path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e, "make_{kind} failed");
                last = e.into();
                continue;
            }
        };
        let outcome = async {
            let (version, rules, event) = signed_template(client, &template)?;
            let event_id = pdu::event_id_of(&event, &rules)?;
            let path = format!(
                "/_matrix/federation/{send_version}/send_{kind}/{}/{}",
                percent_encode(room_id.as_str()),
                percent_encode(event_id.as_str())
            );
            let body = serde_json::to_value(CanonicalJsonValue::Object(event.clone()))
                .map_err(|e| Error::internal(e.to_string()))?;
            let answer = client
                .request(Method::PUT, server, &path, Some(&body))
                .await
                .map_err(Error::from)?;
            let signed = Signed {
                version,
                rules,
                event_id,
                event,
            };
            Ok::<_, Error>((signed, answer))
        }
        .await;
        match outcome {
            Ok(done) => {
                tracing::info!(room = %room_id, %server, "{kind} through another server");
                return Ok(done);
            }
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e.message, "send_{kind} failed");
                last = e;
            }
        }
    }
    Err(last)
}

/// Joins `user` (ours) to `room_id` through the first of `via` that answers: the
/// answer's events are checked (ids, signatures, hashes; then the auth rules, by
/// `bootstrap_remote_room`) and stored.
pub(crate) async fn join_remote(
    fed: &Federation,
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    via: &[String],
) -> Result<OwnedRoomId, Error> {
    let (signed, answer) = handshake(&fed.client, room_id, user, via, Kind::Join).await?;
    let keys = &fed.keys;
    let Signed {
        version,
        rules,
        event_id,
        event,
    } = signed;
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
    Ok(room_id.to_owned())
}

/// Rejects an invite to a room we do not have (or leaves it) through the first of `via`
/// that answers: make_leave, our signed leave, send_leave v2; then keeps the leave in
/// the stub room, so the invite is gone for the user.
pub(crate) async fn leave_remote(
    fed: &Federation,
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    via: &[String],
) -> Result<(), Error> {
    let (signed, _) = handshake(&fed.client, room_id, user, via, Kind::Leave).await?;
    rooms
        .store_remote_leave(room_id, &signed.version, &signed.event_id, signed.event)
        .await?;
    Ok(())
}

/// Knocks on a room we do not have through the first of `via` that answers:
/// make_knock (with the versions we support), our signed knock, send_knock; then keeps
/// the knock, with the stripped state the server returned, in a stub room.
pub(crate) async fn knock_remote(
    fed: &Federation,
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    via: &[String],
) -> Result<(), Error> {
    let (signed, answer) = handshake(&fed.client, room_id, user, via, Kind::Knock).await?;
    let stripped = answer
        .get("knock_room_state")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    rooms
        .store_remote_knock(
            room_id,
            &signed.version,
            &signed.event_id,
            signed.event,
            stripped,
        )
        .await?;
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

/// A make_join or make_leave template filled in and signed: its room version, the
/// version's rules and the event.
fn signed_template(
    client: &FederationClient,
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
    ruma::signatures::hash_and_sign_event(
        client.origin(),
        &client.key().pair,
        &mut event,
        &rules.redaction,
    )
    .map_err(|e| Error::internal(format!("cannot sign our event: {e}")))?;
    Ok((version, rules, event))
}
