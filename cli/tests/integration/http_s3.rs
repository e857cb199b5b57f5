//! S3 repositories (issue 13) everywhere a serving node opens a backup
//! repository, against a real S3 server (moto) on 127.0.0.1: the admin
//! API's backup, verify and download jobs and reads on `s3://...`, a
//! scheduled backup of `serve` into S3, a wrong secret (moto checking
//! signatures), and the control socket (a client's `AWS_*` variables do
//! not travel: the node uses its own). No key ever appears in a response,
//! a job record, an event or an error. Skipped with a message when
//! moto_server is not installed, unless `BBSYNC_REQUIRE_S3=1`.

#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Child, time::Duration};

use crate::common::*;
use bbsync_tests::s3::{ACCESS_KEY_ID, MotoServer, REGION, SECRET_ACCESS_KEY};
use serde_json::{Value, json};

/// A `serve --http` node, killed on drop.
struct Node {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
    token: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve --http` on `data` with exactly the `AWS_*` variables in
/// `env` (none of the test process's own).
fn serve_http(data: &Path, env: &[(&str, &str)]) -> Node {
    let mut c = serve_http_command(data);
    c.env_remove("BBSYNC_REPO");
    for k in [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    let mut child = c.spawn().unwrap();
    let base = read_serve_http_base(&mut child);
    // Through the control socket.
    let token = ok(data, &["http", "token"]).trim().to_string();
    Node { child, base, token }
}

/// One exchange: status and body bytes.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The JSON error of this status; its one-line message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        let msg = self.json()["error"].as_str().unwrap().to_string();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
        msg
    }
}

impl Node {
    /// Every body the API answered, to search for key material.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token));
        let resp = match body {
            Some(v) => agent
                .run(
                    b.header("Content-Type", "application/json")
                        .body(v.to_string())
                        .unwrap(),
                )
                .unwrap(),
            None => agent.run(b.body(()).unwrap()).unwrap(),
        };
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap();
        Reply { status, body }
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(body))
    }

    /// Starts a job through `path` (202), waits until it is over and
    /// returns its final state.
    fn job(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body);
        assert_eq!(r.status, 202, "{}", r.text());
        let id = r.json()["id"].as_u64().unwrap();
        let mut last = Value::Null;
        wait_for(180, &format!("job {id} to finish"), || {
            last = self.get(&format!("/api/v1/jobs/{id}")).json();
            last["status"] != "running"
        });
        last
    }
}

/// Asserts that no byte string of `secrets` occurs in `text`.
fn assert_no_secret(what: &str, text: &[u8], secrets: &[&str]) {
    for s in secrets {
        assert!(
            !text.windows(s.len()).any(|w| w == s.as_bytes()),
            "{what} holds the secret key {s:?}: {}",
            String::from_utf8_lossy(text)
        );
    }
}

/// `bbsync ARGS` with the test server's S3 settings in its environment.
fn s3_cli(data: &Path, moto: &MotoServer, args: &[&str]) -> Out {
    let o = bbsync(data)
        .env_remove("BBSYNC_REPO")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .args(args)
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn s3_cli_json(data: &Path, moto: &MotoServer, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = s3_cli(data, moto, &a);
    assert_eq!(o.code, 0, "bbsync {args:?}: {}\n{}", o.stdout, o.stderr);
    serde_json::from_str(&o.stdout).unwrap()
}

/// Instance `alpha` in `ROOT/a`, holding the mini BBS imported from
/// `ROOT/bbs`.
fn node_with_mini_bbs(root: &Path) -> std::path::PathBuf {
    let a = root.join("a");
    init(&a, "alpha");
    let tree = root.join("bbs");
    mini_bbs(&tree);
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    a
}

fn snapshot_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn api_jobs_reads_and_scheduled_backups_work_on_s3_without_showing_keys() -> TestResult {
    let Some(moto) = MotoServer::start() else {
        return Ok(());
    };
    moto.create_bucket("bbs-api");
    let t = bbsync_tests::tempdir()?;
    let root = t.path();
    let a = node_with_mini_bbs(root);
    // A scheduled backup every minute into S3, and the API's jobs into
    // another prefix of the same bucket.
    let cfg = a.join("config.toml");
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[[backup]]\ncron = \"* * * * *\"\nrepo = \"s3://bbs-api/sched\"\ntags = [\"nightly\"]\n"
        ),
    )?;
    let endpoint = moto.endpoint();
    let n = serve_http(
        &a,
        &[
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ],
    );
    let repo = "s3://bbs-api/api";
    let q = "repo=s3%3A%2F%2Fbbs-api%2Fapi";
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    let mut keep = |what: &str, r: &Reply| bodies.push((what.to_string(), r.body.clone()));

    // Nothing there yet.
    let r = n.get(&format!("/api/v1/backups?{q}"));
    keep("empty list", &r);
    assert_eq!(
        r.json(),
        json!({ "repo": repo, "exists": false, "snapshots": [] })
    );
    let r = n.get(&format!("/api/v1/backups/latest?{q}"));
    keep("show of nothing", &r);
    let e = r.error(404);
    assert_eq!(e, format!("no backup repository at {repo}"));

    // An API backup job into S3.
    let job = n.job(
        "/api/v1/backups",
        &json!({ "repo": repo, "tags": ["manual"], "description": "from the API" }),
    );
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["repo"], repo, "{job}");
    assert_eq!(job["result"]["repo_created"], true, "{job}");
    assert_eq!(job["spec"]["repo"], repo, "{job}");
    let snap = job["result"]["snapshot"].as_str().unwrap().to_string();

    // The API's list and show.
    let r = n.get(&format!("/api/v1/backups?{q}"));
    keep("list", &r);
    let l = r.json();
    assert_eq!(l["repo"], repo, "{l}");
    assert_eq!(l["exists"], true, "{l}");
    assert_eq!(l["snapshots"][0]["id"], snap.as_str(), "{l}");
    assert_eq!(l["snapshots"][0]["signed"], true, "{l}");
    assert_eq!(l["snapshots"][0]["tags"], json!(["manual"]), "{l}");
    let r = n.get(&format!("/api/v1/backups/latest?{q}"));
    keep("show", &r);
    assert_eq!(r.json()["id"], snap.as_str(), "{}", r.text());

    // A verify job of that snapshot, reading every chunk, passes.
    let v = n.job(
        &format!("/api/v1/backups/{snap}/verify"),
        &json!({ "repo": repo, "read_data": true }),
    );
    assert_eq!(v["status"], "succeeded", "{v}");
    // The job form too, of the whole repository.
    let v = n.job(
        "/api/v1/jobs",
        &json!({ "kind": "backup-verify", "repo": repo }),
    );
    assert_eq!(v["status"], "succeeded", "{v}");

    // The download is the export tar, which the CLI verifies as a file.
    let r = n.get(&format!("/api/v1/backups/{snap}/download?{q}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.len() > 1024, "{} bytes", r.body.len());
    keep("download", &r);
    let file = root.join("download.tar");
    std::fs::write(&file, &r.body)?;
    let out = ok(
        &a,
        &[
            "backups",
            "verify",
            "--read-data",
            "--repo",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.contains(": OK"), "{out}");
    let l = json(&a, &["backups", "list", "--repo", file.to_str().unwrap()]);
    assert_eq!(snapshot_ids(&l), vec![snap.clone()]);

    // A location holding keys is refused without repeating them, and no
    // job is made.
    let before = n.get("/api/v1/jobs").json().as_array().unwrap().len();
    let r = n.post(
        "/api/v1/jobs",
        &json!({ "kind": "backup", "repo": "s3://AKIAXX:hunter2@bbs-api/x" }),
    );
    let e = r.error(400);
    assert!(e.contains("holds no user or keys"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let r = n.get("/api/v1/backups?repo=gs://bucket/x");
    assert!(r.error(400).contains("unsupported scheme"), "{}", r.text());
    assert_eq!(
        n.get("/api/v1/jobs").json().as_array().unwrap().len(),
        before
    );

    // The scheduled backup runs (at the next minute) into S3 and says so
    // by its location.
    let mut event = Value::Null;
    wait_for(150, "the scheduled backup into S3", || {
        let log = n.get("/api/v1/log?limit=2048").json();
        event = log
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "backup.scheduled")
            .cloned()
            .unwrap_or(Value::Null);
        !event.is_null()
    });
    assert_eq!(event["data"]["repository"], "s3://bbs-api/sched", "{event}");
    assert_eq!(event["data"]["ok"], true, "{event}");
    let r = n.get("/api/v1/backups/schedules");
    keep("schedules", &r);
    assert_eq!(r.json()[0]["repo"], "s3://bbs-api/sched", "{}", r.text());
    let r = n.get("/metrics");
    keep("metrics", &r);
    assert!(
        r.text().contains(
            "bbsync_backup_last_success_timestamp_seconds{repository=\"s3://bbs-api/sched\"}"
        ),
        "{}",
        r.text()
    );
    let r = n.get("/api/v1/jobs");
    keep("jobs", &r);
    let r = n.get("/api/v1/log?limit=2048");
    keep("log", &r);

    // A client's command through the control socket reaches S3 with the
    // node's keys (the client's AWS_* variables are not sent).
    let o = bbsync(&a)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .args(["--json", "backups", "list", "--repo", repo])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(snapshot_ids(&l), vec![snap.clone()]);

    for (what, body) in &bodies {
        assert_no_secret(what, body, &[SECRET_ACCESS_KEY]);
    }
    drop(n);

    // The CLI, on its own, sees both snapshots on S3.
    let l = s3_cli_json(&a, &moto, &["backups", "list", "--repo", repo]);
    assert_eq!(snapshot_ids(&l), vec![snap.clone()]);
    let l = s3_cli_json(
        &a,
        &moto,
        &["backups", "list", "--repo", "s3://bbs-api/sched"],
    );
    let l = l.as_array().unwrap();
    assert!(!l.is_empty(), "no scheduled snapshot");
    assert_eq!(l[0]["tags"], json!(["nightly"]), "{l:?}");
    let out = s3_cli(
        &a,
        &moto,
        &["backups", "verify", "--repo", "s3://bbs-api/sched"],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    Ok(())
}

#[test]
fn a_wrong_s3_secret_fails_the_job_with_one_line_and_writes_nothing() -> TestResult {
    let Some(moto) = MotoServer::start() else {
        return Ok(());
    };
    moto.create_bucket("bbs-auth");
    let (key_id, secret) = moto.require_auth();
    let wrong = "wrong-secret-0123456789abcdefABCDEF";
    let t = bbsync_tests::tempdir()?;
    let root = t.path();
    let a = node_with_mini_bbs(root);
    // The node's keys come from config.toml (owner-only), with a wrong secret.
    let cfg = a.join("config.toml");
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[s3]\nendpoint = \"{}\"\naccess_key_id = \"{key_id}\"\nsecret_access_key = \"{wrong}\"\n",
            moto.endpoint()
        ),
    )?;
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let n = serve_http(&a, &[]);
    let repo = "s3://bbs-auth/site";
    let secrets = [wrong, secret.as_str()];

    let job = n.job("/api/v1/backups", &json!({ "repo": repo }));
    assert_eq!(job["status"], "failed", "{job}");
    let e = job["error"].as_str().unwrap();
    assert_eq!(
        e,
        "reading s3://bbs-auth/site/config: access denied (check the keys and the bucket's policy)"
    );
    let r = n.get(&format!("/api/v1/jobs/{}", job["id"]));
    assert_no_secret("the failed job", &r.body, &secrets);
    let r = n.get("/api/v1/jobs");
    assert_no_secret("the job list", &r.body, &secrets);
    let r = n.get("/api/v1/backups?repo=s3%3A%2F%2Fbbs-auth%2Fsite");
    let e = r.error(500);
    assert!(e.contains(repo), "{e}");
    assert_no_secret("the list's error", &r.body, &secrets);
    let r = n.get("/api/v1/log?limit=2048");
    assert_no_secret("the event log", &r.body, &secrets);

    // A client's command through the control socket uses the node's keys,
    // not the client's (right) ones: they do not travel, and the client
    // says so first (naming the variables, never their values).
    let o = bbsync(&a)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", &key_id)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env_remove("AWS_REGION")
        .env_remove("AWS_SESSION_TOKEN")
        .args(["backup", "--repo", repo])
        .output()?;
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let (note, rest) = stderr.split_once('\n').unwrap_or((&stderr, ""));
    assert!(
        note.starts_with("note: a node serves ")
            && note.ends_with(
                ": the command runs there, with the node's S3 settings; this shell's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL are not used"
            ),
        "{stderr}"
    );
    assert_no_secret("the client's note", note.as_bytes(), &secrets);
    let o = Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: rest.to_string(),
    };
    let line = assert_one_line_error(&o, "a forwarded backup with the node's wrong secret");
    // Its first request (the repository's config) was refused.
    assert_eq!(
        line,
        "error: reading s3://bbs-auth/site/config: access denied (check the keys and the bucket's policy)"
    );
    assert_no_secret("the forwarded command's error", line.as_bytes(), &secrets);
    drop(n);

    // Nothing was written.
    moto.set_auth(false);
    assert_eq!(moto.object_keys("bbs-auth"), Vec::<String>::new());
    // The right secret, in the environment (which wins over config.toml),
    // passes moto's signature checks: the repository's config is
    // written. (moto 5.2.1 then refuses signed LIST requests whatever the
    // key, computing another signature for their query, so the backup
    // itself cannot finish under its checks.)
    moto.set_auth(true);
    let o = bbsync(&a)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", &key_id)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .args(["backup", "--repo", repo])
        .output()?;
    moto.set_auth(false);
    assert!(
        moto.object_keys("bbs-auth")
            .contains(&"site/config".to_string()),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

#[test]
fn serve_refuses_a_scheduled_s3_backup_without_keys_before_it_starts() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let a = t.path().join("a");
    init(&a, "alpha");
    let cfg = a.join("config.toml");
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!("{text}\n[[backup]]\ncron = \"30 3 * * *\"\nrepo = \"s3://bbs-sched/site\"\n"),
    )?;
    let mut c = bbsync(&a);
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
    ] {
        c.env_remove(k);
    }
    let o = c
        .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .timeout(Duration::from_secs(60))
        .output()?;
    let o = Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    let line = assert_one_line_error(&o, "a scheduled S3 backup without keys");
    assert_eq!(
        line,
        "error: [[backup]] with cron \"30 3 * * *\": no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id and secret_access_key under [s3] in config.toml"
    );
    // A malformed location too.
    std::fs::write(
        &cfg,
        format!("{text}\n[[backup]]\ncron = \"30 3 * * *\"\nrepo = \"s3://Bad_Bucket/x\"\n"),
    )?;
    let o = bbsync(&a)
        .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .timeout(Duration::from_secs(60))
        .output()?;
    let o = Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    let line = assert_one_line_error(&o, "a scheduled backup with a malformed location");
    assert!(
        line.contains("bad repository location \"s3://Bad_Bucket/x\""),
        "{line}"
    );
    Ok(())
}
