//! History visibility (spec: Client-Server API, "History visibility"): which events a
//! user may see, judged by the room's state at each event.

use std::collections::HashMap;

use ganglion_core::Result;
use ganglion_storage::events::EventRow;
use serde_json::Value;

use crate::{Rooms, storage_error};

#[derive(Clone)]
struct Judgement {
    membership: String,
    visibility: String,
}

impl Rooms {
    /// Keeps the events `user_id` may see. `currently_joined` is the user's membership now.
    pub async fn filter_visible(
        &self,
        user_id: &str,
        rows: Vec<EventRow>,
    ) -> Result<Vec<EventRow>> {
        if rows.is_empty() {
            return Ok(rows);
        }
        let currently_joined = match self
            .inner
            .store
            .select_membership(&rows[0].room_id, user_id)
            .await
            .map_err(storage_error)?
        {
            Some((m, _)) => m == "join",
            None => false,
        };
        let mut cache: HashMap<Option<i64>, Judgement> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            // A user always sees their own membership events.
            if row.kind == "m.room.member" && row.state_key.as_deref() == Some(user_id) {
                out.push(row);
                continue;
            }
            let j = match cache.get(&row.state_group) {
                Some(j) => j.clone(),
                None => {
                    let j = self.judge(row.state_group, user_id).await?;
                    cache.insert(row.state_group, j.clone());
                    j
                }
            };
            let visible = match j.visibility.as_str() {
                "world_readable" => true,
                _ if j.membership == "join" => true,
                "shared" => currently_joined,
                "invited" => j.membership == "invite",
                _ => false,
            };
            if visible {
                out.push(row);
            }
        }
        Ok(out)
    }

    async fn judge(&self, group: Option<i64>, user_id: &str) -> Result<Judgement> {
        let Some(group) = group else {
            return Ok(Judgement {
                membership: "leave".into(),
                visibility: "shared".into(),
            });
        };
        let state = self
            .inner
            .store
            .select_state_group(group)
            .await
            .map_err(storage_error)?;
        let member = state.get(&("m.room.member".to_owned(), user_id.to_owned()));
        let hv = state.get(&("m.room.history_visibility".to_owned(), String::new()));
        let ids: Vec<String> = member
            .iter()
            .chain(hv.iter())
            .map(|s| (*s).clone())
            .collect();
        let pdus = self.load_pdus(&ids).await?;
        let field = |id: Option<&String>, key: &str| {
            id.and_then(|i| pdus.get(i))
                .and_then(|p| p.content_as::<Value>())
                .and_then(|c| c.get(key).and_then(Value::as_str).map(str::to_owned))
        };
        Ok(Judgement {
            membership: field(member, "membership").unwrap_or_else(|| "leave".into()),
            visibility: field(hv, "history_visibility").unwrap_or_else(|| "shared".into()),
        })
    }
}
