//! Invites across servers (Server-Server API, "Inviting to a room"), outbound: the
//! invitee's server countersigns our invite before we store it.

use ganglion_core::{Error, Result, percent::percent_encode};
use ganglion_federation_client::{FederationClient, Method, pdu};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId, UserId};
use serde_json::{Value, json};

/// Sends `event` (signed by us) with the room's stripped state to the invitee's server
/// (`PUT /_matrix/federation/v2/invite`); returns the event with its signature added.
pub(crate) async fn countersign(
    client: &FederationClient,
    room_version: RoomVersionId,
    event: CanonicalJsonObject,
    invite_room_state: Vec<Value>,
) -> Result<CanonicalJsonObject> {
    let text = |k: &str| match event.get(k) {
        Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let invitee = text("state_key")
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| Error::bad_json("an invite without an invitee"))?;
    let room_id = text("room_id").ok_or_else(|| Error::bad_json("no room id"))?;
    let rules = room_version
        .rules()
        .ok_or_else(|| Error::internal("unsupported room version"))?;
    let event_id = pdu::event_id_of(&event, &rules)?;
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        percent_encode(&room_id),
        percent_encode(event_id.as_str())
    );
    let body = json!({
        "room_version": room_version,
        "event": CanonicalJsonValue::Object(event.clone()),
        "invite_room_state": invite_room_state,
    });
    let answer = client
        .request(
            Method::PUT,
            invitee.server_name().as_str(),
            &path,
            Some(&body),
        )
        .await
        .map_err(Error::from)?;
    match answer
        .get("event")
        .cloned()
        .map(CanonicalJsonValue::try_from)
    {
        Some(Ok(CanonicalJsonValue::Object(signed)))
            if pdu::event_id_of(&signed, &rules).ok() == Some(event_id) =>
        {
            Ok(signed)
        }
        _ => Err(Error::bad_json(
            "the invitee's server did not return the invite it signed",
        )),
    }
}
