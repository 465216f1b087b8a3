//! Serving events to clients: the ClientEvent format (spec: Client-Server API, "Room
//! Events"), with `unsigned` computed here and redactions applied on the way out.

use std::collections::HashMap;

use ganglion_core::{Result, time::now_ms};
use ganglion_storage::events::EventRow;
use ruma::{CanonicalJsonObject, room_version_rules::RedactionRules};
use serde_json::{Map, Value, json};

use crate::{Rooms, storage_error};

/// Who is looking, for `unsigned.transaction_id` (shown only to the sending device).
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    /// The user.
    pub user_id: &'a str,
    /// Their device.
    pub device_id: &'a str,
}

/// Which shape to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// With `room_id` (`/messages`, `/event`, `/context`, `/state`).
    Client,
    /// Without `room_id` (`/sync` timelines and state).
    Sync,
}

/// Formats one event. `redaction` is the event that redacted it, if any.
pub fn client_event(
    row: &EventRow,
    redaction: Option<&EventRow>,
    rules: Option<&RedactionRules>,
    viewer: Option<Viewer<'_>>,
    shape: Shape,
    now: i64,
) -> Value {
    let pdu: Map<String, Value> = serde_json::from_str(&row.json).unwrap_or_default();
    let mut content = pdu.get("content").cloned().unwrap_or_else(|| json!({}));
    let mut out = Map::new();
    let mut unsigned = Map::new();
    if let (Some(red), Some(rules)) = (redaction, rules) {
        if let Ok(obj) = serde_json::from_str::<CanonicalJsonObject>(&row.json)
            && let Ok(redacted) = ruma::canonical_json::redact(obj, rules, None)
        {
            content = redacted
                .get("content")
                .and_then(|c| serde_json::to_value(c).ok())
                .unwrap_or_else(|| json!({}));
        }
        unsigned.insert(
            "redacted_because".into(),
            client_event(red, None, None, None, Shape::Client, now),
        );
    }
    out.insert("content".into(), content);
    out.insert("event_id".into(), json!(row.event_id));
    let ts = pdu.get("origin_server_ts").cloned().unwrap_or(json!(0));
    out.insert("origin_server_ts".into(), ts.clone());
    if shape == Shape::Client {
        out.insert("room_id".into(), json!(row.room_id));
    }
    out.insert("sender".into(), json!(row.sender));
    out.insert("type".into(), json!(row.kind));
    if let Some(sk) = &row.state_key {
        out.insert("state_key".into(), json!(sk));
    }
    if let Some(r) = pdu.get("redacts") {
        out.insert("redacts".into(), r.clone());
    } else if row.kind == "m.room.redaction"
        && let Some(r) = out.get("content").and_then(|c| c.get("redacts")).cloned()
    {
        // Clients of all versions read the top-level key (the spec keeps it for compatibility).
        out.insert("redacts".into(), r);
    }
    if let Some(u) = &row.unsigned
        && let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(u)
    {
        for (k, v) in extra {
            if k == "prev_content" || k == "prev_sender" || k == "replaces_state" {
                unsigned.insert(k, v);
            }
        }
    }
    if let Some(ts) = ts.as_i64() {
        unsigned.insert("age".into(), json!((now - ts).max(0)));
    }
    if let (Some(v), Some((txn, device))) = (viewer, &row.txn)
        && v.user_id == row.sender
        && v.device_id == device
    {
        unsigned.insert("transaction_id".into(), json!(txn));
    }
    if row.kind == "m.room.member"
        && let Some(m) = out
            .get("content")
            .and_then(|c| c.get("membership"))
            .cloned()
    {
        unsigned.insert("membership".into(), m);
    }
    out.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(out)
}

impl Rooms {
    /// Formats events for a viewer, applying redactions.
    pub async fn format_events(
        &self,
        rows: &[EventRow],
        viewer: Option<Viewer<'_>>,
        shape: Shape,
    ) -> Result<Vec<Value>> {
        let redaction_ids: Vec<String> =
            rows.iter().filter_map(|r| r.redacted_by.clone()).collect();
        let redactions: HashMap<String, EventRow> = if redaction_ids.is_empty() {
            HashMap::new()
        } else {
            self.inner
                .store
                .select_events(&redaction_ids)
                .await
                .map_err(storage_error)?
                .into_iter()
                .map(|r| (r.event_id.clone(), r))
                .collect()
        };
        let mut rules: HashMap<String, Option<RedactionRules>> = HashMap::new();
        let now = now_ms();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let redaction = row.redacted_by.as_ref().and_then(|id| redactions.get(id));
            let r = if redaction.is_some() {
                if !rules.contains_key(&row.room_id) {
                    let got = self
                        .room_version(&row.room_id)
                        .await
                        .ok()
                        .map(|(_, r)| r.redaction);
                    rules.insert(row.room_id.clone(), got);
                }
                rules.get(&row.room_id).and_then(|r| r.as_ref())
            } else {
                None
            };
            out.push(client_event(row, redaction, r, viewer, shape, now));
        }
        Ok(out)
    }
}
