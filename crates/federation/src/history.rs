//! Fetching a room's history from other servers for back-pagination: `GET /backfill`
//! and `GET /event` (the auth events a batch refers to but does not carry). Every event
//! is checked before it is handed on: its id is its reference hash, the servers that
//! must have signed it did, and an event whose content hash does not match is redacted
//! (spec: "Checks performed on receipt of a PDU").

use ganglion_core::{Error, Result};
use ganglion_rooms::backfill::{EventsFuture, RemoteHistory};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomVersionId,
    room_version_rules::RoomVersionRules, signatures::Verified,
};
use serde_json::Value;

use crate::{client::FederationClient, keys::KeyRing, pdu};

/// Fetches history through the outbound client.
#[derive(Debug, Clone)]
pub struct History {
    /// The outbound client.
    pub client: FederationClient,
    /// Remote keys, to check signatures.
    pub keys: KeyRing,
}

type Events = Vec<(OwnedEventId, CanonicalJsonObject)>;

impl RemoteHistory for History {
    fn backfill(
        &self,
        room_id: OwnedRoomId,
        version: RoomVersionId,
        servers: Vec<String>,
        from: Vec<String>,
        limit: usize,
    ) -> EventsFuture<'_> {
        Box::pin(async move {
            let rules = rules_of(&version)?;
            let mut query: Vec<String> = from
                .iter()
                .map(|v| format!("v={}", ganglion_http::percent_encode(v)))
                .collect();
            query.push(format!("limit={limit}"));
            let path = format!(
                "/_matrix/federation/v1/backfill/{}?{}",
                ganglion_http::percent_encode(room_id.as_str()),
                query.join("&")
            );
            let mut last = Error::not_found("no server to backfill from");
            for server in &servers {
                match self.client.get(server, &path).await {
                    Ok(answer) => {
                        let pdus = answer
                            .get("pdus")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        return Ok(checked_pdus(&self.keys, &rules, pdus, server).await);
                    }
                    Err(e) => {
                        tracing::warn!(%server, room = %room_id, error = %e, "backfill request failed");
                        last = e.into();
                    }
                }
            }
            Err(last)
        })
    }

    fn fetch_events(
        &self,
        room_id: OwnedRoomId,
        version: RoomVersionId,
        servers: Vec<String>,
        event_ids: Vec<String>,
    ) -> EventsFuture<'_> {
        Box::pin(async move {
            let rules = rules_of(&version)?;
            let mut out = Events::new();
            for id in event_ids.iter().take(MAX_FETCHED) {
                let path = format!(
                    "/_matrix/federation/v1/event/{}",
                    ganglion_http::percent_encode(id)
                );
                for server in &servers {
                    let Ok(answer) = self.client.get(server, &path).await else {
                        continue;
                    };
                    let pdus = answer
                        .get("pdus")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let got = checked_pdus(&self.keys, &rules, pdus, server).await;
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
        })
    }
}

/// Most single events one batch fetches.
const MAX_FETCHED: usize = 50;

fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .ok_or_else(|| Error::internal(format!("room version {version} is not supported")))
}

/// The PDUs of an answer that pass the checks (id, signatures), each with its id; one
/// whose content hash does not match comes back redacted. The others are dropped and
/// logged.
pub async fn checked_pdus(
    keys: &KeyRing,
    rules: &RoomVersionRules,
    pdus: Vec<Value>,
    from: &str,
) -> Events {
    let mut out = Events::new();
    for v in pdus {
        let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(v) else {
            tracing::warn!(server = %from, "a PDU that is not a JSON object");
            continue;
        };
        match check_pdu(keys, rules, obj).await {
            Ok(checked) => out.push(checked),
            Err(e) => tracing::warn!(server = %from, error = %e.message, "refused a PDU"),
        }
    }
    out
}

/// One PDU checked: its id, and the event (redacted when its content hash is wrong).
pub async fn check_pdu(
    keys: &KeyRing,
    rules: &RoomVersionRules,
    obj: CanonicalJsonObject,
) -> Result<(OwnedEventId, CanonicalJsonObject)> {
    let id = pdu::event_id_of(&obj, rules)?;
    match pdu::verify(keys, &obj, rules).await? {
        Verified::All => Ok((id, obj)),
        Verified::Signatures => {
            tracing::warn!(event = %id, "content hash mismatch: the event is redacted");
            let redacted = ruma::canonical_json::redact(obj, &rules.redaction, None)
                .map_err(|e| Error::bad_json(format!("cannot redact: {e}")))?;
            Ok((id, redacted))
        }
    }
}
