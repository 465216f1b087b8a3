//! kill -9 during a burst of sends: every acknowledged event survives, none twice.

use std::{collections::HashSet, time::Duration};

use ganglion_tests::{Backend, TestServer, client::enc};
use serde_json::json;

use crate::all3;

async fn kill9_loses_nothing_acknowledged(b: Backend) {
    let mut srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let room = alice.create_room(json!({})).await;
    let r = enc(&room);

    // 8 senders hammer the room; we kill the server mid-burst.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = alice.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                let res = c
                    .http
                    .put(format!(
                        "{}/_matrix/client/v3/rooms/{r}/send/m.room.message/w{w}-{i}",
                        c.base
                    ))
                    .bearer_auth(c.token.as_deref().unwrap_or_default())
                    .body(json!({ "msgtype": "m.text", "body": format!("w{w}-{i}") }).to_string())
                    .send()
                    .await;
                match res {
                    Ok(resp) if resp.status() == 200 => {
                        let v: serde_json::Value = resp.json().await.unwrap_or_default();
                        if let Some(id) = v["event_id"].as_str() {
                            acked.push(id.to_owned());
                        }
                    }
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    srv.kill9();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("sender task"));
    }
    assert!(
        !acked.is_empty(),
        "no send was acknowledged before the kill"
    );

    srv.spawn().await;
    // Every acknowledged event is in /messages exactly once…
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=500");
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let page = alice.get(&path).await.ok();
        for e in page["chunk"].as_array().expect("chunk") {
            if e["type"] == "m.room.message" {
                seen.push(e["event_id"].as_str().expect("id").to_owned());
            }
        }
        match page["end"].as_str() {
            Some(e) => from = Some(e.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an event appears twice in /messages"
    );
    for id in &acked {
        assert!(
            unique.contains(id),
            "acknowledged event {id} lost after kill -9"
        );
    }
    // …and in a fresh /sync.
    let filter = json!({ "room": { "timeline": { "limit": 5000 } } }).to_string();
    let s = alice
        .get(&format!("/_matrix/client/v3/sync?filter={}", enc(&filter)))
        .await
        .ok();
    let tl: Vec<String> = s["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().expect("id").to_owned())
        .collect();
    let tl_set: HashSet<&String> = tl.iter().collect();
    assert_eq!(tl_set.len(), tl.len(), "an event appears twice in /sync");
    for id in &acked {
        assert!(
            tl_set.contains(id),
            "acknowledged event {id} missing from a fresh /sync"
        );
    }
    srv.cleanup().await;
}
all3!(kill9_loses_nothing_acknowledged);
