//! Fetching a room's history from other servers for back-pagination: `GET /backfill`
//! and `GET /event` (the auth events a batch refers to but does not carry). Every event
//! is checked before it is handed on: its id is its reference hash, the servers that
//! must have signed it did, and an event whose content hash does not match is redacted
//! (spec: "Checks performed on receipt of a PDU").

use ganglion_core::{Error, Result, percent::percent_encode};
use ganglion_federation_client::{
    Federation,
    pdu::{Events, checked_pdus},
};
use ruma::{OwnedRoomId, RoomVersionId, room_version_rules::RoomVersionRules};
use serde_json::Value;

/// Most single events one batch fetches.
const MAX_FETCHED: usize = 50;

/// Asks `servers` in turn for up to `limit` events before and including `from`
/// (`GET /backfill`); the first that answers gives the batch.
pub(crate) async fn backfill(
    fed: &Federation,
    room_id: OwnedRoomId,
    version: RoomVersionId,
    servers: Vec<String>,
    from: Vec<String>,
    limit: usize,
) -> Result<Events> {
    let rules = rules_of(&version)?;
    let mut query: Vec<String> = from
        .iter()
        .map(|v| format!("v={}", percent_encode(v)))
        .collect();
    query.push(format!("limit={limit}"));
    let path = format!(
        "/_matrix/federation/v1/backfill/{}?{}",
        percent_encode(room_id.as_str()),
        query.join("&")
    );
    let mut last = Error::not_found("no server to backfill from");
    for server in &servers {
        match fed.client.get(server, &path).await {
            Ok(answer) => {
                let pdus = answer
                    .get("pdus")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                return Ok(checked_pdus(&fed.keys, &rules, pdus, server).await);
            }
            Err(e) => {
                tracing::warn!(%server, room = %room_id, error = %e, "backfill request failed");
                last = e.into();
            }
        }
    }
    Err(last)
}

/// Fetches single events from `servers` (`GET /event`); those no server has are left
/// out.
pub(crate) async fn fetch_events(
    fed: &Federation,
    room_id: OwnedRoomId,
    version: RoomVersionId,
    servers: Vec<String>,
    event_ids: Vec<String>,
) -> Result<Events> {
    let rules = rules_of(&version)?;
    let mut out = Events::new();
    for id in event_ids.iter().take(MAX_FETCHED) {
        let path = format!("/_matrix/federation/v1/event/{}", percent_encode(id));
        for server in &servers {
            let Ok(answer) = fed.client.get(server, &path).await else {
                continue;
            };
            let pdus = answer
                .get("pdus")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let got = checked_pdus(&fed.keys, &rules, pdus, server).await;
            if let Some(found) = got.into_iter().find(|(e, _)| e.as_str() == id) {
                out.push(found);
                break;
            }
        }
        if !out.iter().any(|(e, _)| e.as_str() == id) {
            tracing::warn!(room = %room_id, event = %id, "no server gave us the event");
        }
    }
    Ok(out)
}

fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .ok_or_else(|| Error::internal(format!("room version {version} is not supported")))
}
