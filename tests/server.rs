//! Starting and stopping a real `ganglion` process for a test.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Which database the server under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in the test's temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database, dropped afterwards.
    Postgres,
    /// The split shape: `ganglion-main` and two `ganglion-sync` workers behind nginx, over
    /// a fresh PostgreSQL database and Redis. `base` is nginx; restarts restart main.
    Split,
}

/// A running server and everything it owns.
pub struct TestServer {
    pub base: String,
    pub port: u16,
    pub dir: PathBuf,
    pub backend: Backend,
    pub db_name: Option<String>,
    pub config_path: PathBuf,
    /// Where main itself listens (differs from `base` behind nginx).
    pub main_base: String,
    child: Option<Child>,
    /// Workers and nginx of the split shape.
    extras: Vec<Worker>,
}

/// The `ganglion` binary: $GANGLION_BIN, or next to the test executable's directory.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("GANGLION_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe path");
    // target/debug/deps/it-<hash> -> target/debug/ganglion
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("ganglion")
}

/// Another binary of the workspace (`ganglion-sync`, …), next to `ganglion`.
pub fn sibling_binary(name: &str) -> PathBuf {
    binary().with_file_name(name)
}

/// A worker process started next to a [`TestServer`], killed when dropped.
pub struct Worker {
    pub base: String,
    child: Child,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PostgreSQL admin URL for creating test databases.
pub fn pg_url() -> String {
    std::env::var("GANGLION_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("addr")
        .port()
}

fn unique(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let s: String = (0..10)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)).to_ascii_lowercase())
        .collect();
    format!("{prefix}_{s}")
}

async fn pg_admin(sql: &str) {
    use sqlx::Connection;
    let url = format!("{}/postgres", pg_url());
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL (set GANGLION_TEST_PG)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

impl TestServer {
    /// Starts a server with open registration and rate limits off, plus `extra` TOML.
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, "").await
    }

    /// Starts a server with extra configuration appended (TOML sections).
    pub async fn start_with(backend: Backend, extra: &str) -> TestServer {
        let dir = std::env::temp_dir().join(unique("ganglion-it"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let main_port = if backend == Backend::Split {
            free_port()
        } else {
            port
        };
        let (db_url, db_name) = match backend {
            Backend::Sqlite => (format!("sqlite://{}/ganglion.db", dir.display()), None),
            Backend::Postgres | Backend::Split => {
                let name = unique("ganglion_it");
                pg_admin(&format!("CREATE DATABASE {name}")).await;
                (format!("{}/{name}", pg_url()), Some(name))
            }
        };
        let has = |section: &str| extra.contains(&format!("[{section}]"));
        let mut config = format!(
            "[server]\nserver_name = \"localhost:{port}\"\ndata_dir = \"{}\"\n\n[listeners]\nclient = \"127.0.0.1:{main_port}\"\n{}\n[database]\nurl = \"{db_url}\"\n\n",
            dir.display(),
            if backend == Backend::Split {
                "x_forwarded = true\n"
            } else {
                ""
            },
        );
        if backend == Backend::Split {
            let redis = std::env::var("GANGLION_TEST_REDIS")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            config.push_str(&format!(
                "[bus]\nredis_url = \"{redis}\"\nkey_prefix = \"{}\"\n\n",
                unique("it-split")
            ));
        }
        if !has("registration") {
            config.push_str("[registration]\nenabled = true\nshared_secret = \"test-secret\"\n\n");
        }
        if !has("rate_limits") {
            config.push_str("[rate_limits]\nenabled = false\n\n");
        }
        config.push_str(extra);
        let config_path = dir.join("ganglion.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut srv = TestServer {
            base: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            backend,
            db_name,
            config_path,
            main_base: format!("http://127.0.0.1:{main_port}"),
            child: None,
            extras: Vec::new(),
        };
        srv.spawn().await;
        if backend == Backend::Split {
            srv.start_split_front(main_port).await;
        }
        srv
    }

    /// Two sync workers and nginx in front of main (the split shape).
    async fn start_split_front(&mut self, main_port: u16) {
        let w1 = self.worker("ganglion-sync", "sync-1").await;
        let w2 = self.worker("ganglion-sync", "sync-2").await;
        let strip = |b: &str| b.trim_start_matches("http://").to_owned();
        let out = Command::new(binary())
            .args([
                "generate-proxy",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--main",
                &format!("127.0.0.1:{main_port}"),
            ])
            .arg("--sync")
            .arg(format!("{},{}", strip(&w1.base), strip(&w2.base)))
            .output()
            .expect("generate-proxy");
        assert!(out.status.success(), "generate-proxy failed");
        let d = self.dir.display();
        std::fs::write(self.dir.join("proxy.conf"), &out.stdout).expect("proxy conf");
        std::fs::create_dir_all(self.dir.join("tmp")).expect("tmp");
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/tmp/body;\n proxy_temp_path {d}/tmp/proxy;\n fastcgi_temp_path {d}/tmp/fcgi;\n uwsgi_temp_path {d}/tmp/uwsgi;\n scgi_temp_path {d}/tmp/scgi;\n include {d}/proxy.conf;\n}}\n"
        );
        std::fs::write(self.dir.join("nginx.conf"), conf).expect("nginx conf");
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new(nginx)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-p")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (install it: tests/run does)");
        self.extras.push(w1);
        self.extras.push(w2);
        self.extras.push(Worker {
            base: self.base.clone(),
            child,
        });
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "nginx did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts (or restarts) the process and waits until it answers.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let bin = if self.backend == Backend::Split {
            sibling_binary("ganglion-main")
        } else {
            binary()
        };
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(60)).await;
    }

    /// Starts a worker binary (`ganglion-sync`) on the same configuration and a port of its
    /// own, and waits until it answers.
    pub async fn worker(&self, bin: &str, instance: &str) -> Worker {
        self.worker_on(bin, instance, free_port()).await
    }

    /// Kills split-shape worker `idx` (0 or 1) with SIGKILL and starts it again on the same
    /// port, so nginx finds it where it was.
    pub async fn restart_sync_worker(&mut self, idx: usize) {
        let old = self.extras.remove(idx);
        let port: u16 = old
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("worker port");
        drop(old);
        let w = self
            .worker_on("ganglion-sync", &format!("sync-{}", idx + 1), port)
            .await;
        self.extras.insert(idx, w);
    }

    /// The Redis key prefix of a split-shape server.
    pub fn bus_prefix(&self) -> Option<String> {
        let cfg = std::fs::read_to_string(&self.config_path).ok()?;
        let line = cfg.lines().find(|l| l.starts_with("key_prefix"))?;
        Some(line.split('"').nth(1)?.to_owned())
    }

    async fn worker_on(&self, bin: &str, instance: &str, port: u16) -> Worker {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{instance}.log")))
            .expect("log file");
        let child = Command::new(sibling_binary(bin))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("GANGLION_LISTENERS__CLIENT", format!("127.0.0.1:{port}"))
            .env("GANGLION_INSTANCE", instance)
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let worker = Worker {
            base: format!("http://127.0.0.1:{port}"),
            child,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", worker.base)).send().await
                && r.status().is_success()
            {
                return worker;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join(format!("{instance}.log")))
                    .unwrap_or_default();
                panic!("{bin} did not become healthy:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/health` answers, or panics with the log.
    pub async fn wait_healthy(&mut self, limit: Duration) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.main_base)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("server exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("server did not become healthy:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM and waits for it.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// A client with no token.
    pub fn client(&self) -> crate::Client {
        crate::Client::new(&self.base)
    }

    /// Registers a user with a random suffix and returns a logged-in client.
    pub async fn user(&self, name: &str) -> crate::Client {
        let localpart = unique(name);
        let c = self.client();
        c.register(&localpart, "password-123").await
    }

    /// Drops the PostgreSQL database and the temporary directory.
    pub async fn cleanup(mut self) {
        self.kill9();
        self.extras.clear();
        if let Some(name) = self.db_name.take() {
            pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
