//! Invites across servers (Server-Server API, "Inviting to a room"). Outbound: the
//! invitee's server countersigns our invite before we store it.

use ganglion_core::{Error, Result};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId, UserId};
use serde_json::{Value, json};

use ganglion_federation_client::FederationClient;

/// Sends our users' invites of other servers' users to those servers.
#[derive(Debug, Clone)]
pub struct Inviter {
    /// The outbound client.
    pub client: FederationClient,
}

impl ganglion_rooms::RemoteInviter for Inviter {
    fn invite(
        &self,
        room_version: RoomVersionId,
        event: CanonicalJsonObject,
        invite_room_state: Vec<Value>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<CanonicalJsonObject>> + Send + '_>> {
        Box::pin(async move {
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
            let event_id = ganglion_federation_client::pdu::event_id_of(&event, &rules)?;
            let path = format!(
                "/_matrix/federation/v2/invite/{}/{}",
                ganglion_http::percent_encode(&room_id),
                ganglion_http::percent_encode(event_id.as_str())
            );
            let body = json!({
                "room_version": room_version,
                "event": CanonicalJsonValue::Object(event.clone()),
                "invite_room_state": invite_room_state,
            });
            let answer = self
                .client
                .request(
                    reqwest::Method::PUT,
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
                    if ganglion_federation_client::pdu::event_id_of(&signed, &rules).ok()
                        == Some(event_id) =>
                {
                    Ok(signed)
                }
                _ => Err(Error::bad_json(
                    "the invitee's server did not return the invite it signed",
                )),
            }
        })
    }
}
