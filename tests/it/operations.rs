//! Operations: JSON logs, the metrics listener, readiness, graceful shutdown.

use ganglion_tests::{Backend, TestServer, client::enc};
use serde_json::{Value, json};

use crate::both;

async fn metrics_logs_and_graceful_shutdown(b: Backend) {
    let metrics_port = ganglion_tests::server::free_port();
    let mut srv =
        TestServer::start_with(b, "[logging]\nformat = \"json\"\nlevel = \"info\"\n").await;
    // Restart with a metrics listener added to the generated [listeners] section.
    srv.kill9();
    let cfg = std::fs::read_to_string(&srv.config_path).expect("config");
    let cfg = cfg.replace(
        "[listeners]\n",
        &format!("[listeners]\nmetrics = \"127.0.0.1:{metrics_port}\"\n"),
    );
    std::fs::write(&srv.config_path, cfg).expect("rewrite config");
    srv.spawn().await;

    let alice = srv.user("alice").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "counted").await;
    let http = ganglion_tests::http().build().expect("http client");
    let metrics = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("ganglion_http_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ganglion_persist_batch_events"),
        "{metrics}"
    );
    assert!(metrics.contains("ganglion_db_txn_seconds"), "{metrics}");
    let ready = http
        .get(format!("http://127.0.0.1:{metrics_port}/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    // The client port does not serve metrics.
    assert_eq!(srv.client().get("/metrics").await.status, 404);

    // SIGTERM during a burst: every acknowledged send is kept, and the process exits cleanly.
    let r = enc(&room);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let c = alice.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100 {
                let res = c
                    .http
                    .put(format!(
                        "{}/_matrix/client/v3/rooms/{r}/send/m.room.message/g{w}-{i}",
                        c.base
                    ))
                    .bearer_auth(c.token.as_deref().unwrap_or_default())
                    .body(json!({ "msgtype": "m.text", "body": "x" }).to_string())
                    .send()
                    .await;
                match res {
                    Ok(resp) if resp.status() == 200 => {
                        let v: Value = resp.json().await.unwrap_or_default();
                        acked.extend(v["event_id"].as_str().map(str::to_owned));
                    }
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = srv.stop().expect("process was running");
    assert!(
        status.success(),
        "graceful shutdown exit status {status}:\n{}",
        srv.log()
    );
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("task"));
    }
    let log = srv.log();
    let json_lines = log.lines().filter(|l| l.starts_with('{')).count();
    assert!(json_lines > 3, "logs are not JSON:\n{log}");
    for line in log.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("bad JSON log line {line}: {e}"));
    }
    assert!(
        log.contains("requests drained") || log.contains("shutting down"),
        "{log}"
    );

    srv.spawn().await;
    for id in &acked {
        let r2 = alice
            .get(&format!("/_matrix/client/v3/rooms/{r}/event/{}", enc(id)))
            .await;
        assert_eq!(
            r2.status, 200,
            "acknowledged {id} lost over a graceful restart"
        );
    }
    srv.cleanup().await;
}
both!(metrics_logs_and_graceful_shutdown);
