//! Federation reads of the directory, spaces, timestamps and OpenID: the public room
//! directory both ways with Synapse, space hierarchies both ways, Synapse asking us for
//! the event nearest a time, OpenID tokens, and the errors each endpoint gives for bad
//! input (never a 500). `with_synapse` holds the interop tests, `between_ganglions` the
//! ones two Ganglions (or one) are enough for; the helpers they share are here.

mod between_ganglions;
mod with_synapse;

use std::collections::BTreeSet;

use ganglion_tests::{Client, client::enc};
use serde_json::{Value, json};

/// The room ids of a directory page.
pub(crate) fn room_ids(page: &Value, key: &str) -> BTreeSet<String> {
    page[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `child` as a child of `space` (`m.space.child`, via `server`).
pub(crate) async fn add_child(c: &Client, space: &str, child: &str, server: &str, extra: Value) {
    let mut content = json!({ "via": [server] });
    if let (Some(o), Some(e)) = (content.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    c.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
            enc(space),
            enc(child)
        ),
        content,
    )
    .await
    .ok();
}

/// The room ids of a hierarchy page, in order.
pub(crate) fn hierarchy_ids(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Now, in ms since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
