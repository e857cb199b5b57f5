//! The dashboard in a real headless Chromium, driven through WebDriver
//! (chromedriver + fantoccini): log in through the URL of `bbsync ui`,
//! check the overview against the node's real state, add a trusted
//! instance through the form, run a backup from the backups page and see
//! it listed; screenshots of every page go to target/dashboard/.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the test
//! says so and passes, unless `BBSYNC_REQUIRE_BROWSER=1` (as in `.ci/run`).

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use crate::common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A child process killed (by its own pid) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_present() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var("BBSYNC_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "BBSYNC_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver; BBSYNC_REQUIRE_BROWSER=1 makes this a failure)"
        );
    }
    present
}

fn serve_http(data: &Path) -> (Proc, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .args(["--no-progress", "--data-dir"])
        .arg(data)
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ])
        .env_remove("BBSYNC_DATA")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let (mut addr, mut http) = (String::new(), String::new());
    r.read_line(&mut addr).unwrap();
    r.read_line(&mut http).unwrap();
    let base = http.trim().strip_prefix("http: ").unwrap().to_string();
    (Proc(child), base)
}

fn chromedriver() -> (Proc, u16) {
    let port = free_port();
    let child = std::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(30, "chromedriver to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (Proc(child), port)
}

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Waits until the element's text satisfies `ok`; returns the text.
async fn text_until(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && ok(&t)
        {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what} ({css})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn page(c: &Client, base: &str, name: &str) {
    c.goto(&format!("{base}#{name}")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(&format!("#page-{name}:not(.hidden)")))
        .await
        .unwrap();
}

#[test]
fn the_dashboard_works_in_a_real_browser() -> TestResult {
    if !browser_present() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    let objects = mini_bbs(&tree);
    let data = tmp.path().join("node");
    init(&data, "dashboard-node");
    ok(&data, &["import-bbs", tree.to_str().unwrap()]);
    let other = tmp.path().join("other");
    init(&other, "other-node");
    let other_card = card(&other);
    let (_node, base) = serve_http(&data);
    let url = ok(&data, &["ui"]).trim().to_string();
    let status = json(&data, &["status"]);
    let (_driver, port) = chromedriver();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listed = rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();

        // Before logging in, the page says how to.
        c.goto(&base).await.unwrap();
        text_until(&c, "#login", "the login hint", |t| t.contains("bbsync ui")).await;

        // Log in through the one-time URL: the session cookie is set and
        // the overview shows the node's real state.
        c.goto(&url).await.unwrap();
        c.wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css("body[data-ready='1']"))
            .await
            .unwrap();
        let name = text_until(&c, "#ov-name", "the instance name", |t| !t.is_empty()).await;
        assert_eq!(name, "dashboard-node");
        let id = text_until(&c, "#ov-id", "the instance id", |t| !t.is_empty()).await;
        assert_eq!(id, status["instance_id"].as_str().unwrap());
        let objs = c.find(Locator::Css("#ov-objects")).await.unwrap().text().await.unwrap();
        assert!(objs.starts_with(&format!("{objects} live")), "{objs}");
        assert_eq!(status["objects"], objects);
        let kinds = c.find(Locator::Css("#ov-kinds")).await.unwrap().text().await.unwrap();
        for (k, n) in status["objects_by_kind"].as_object().unwrap() {
            assert!(kinds.contains(&format!("{n} {k}")), "{kinds} lacks {n} {k}");
        }
        let seq = c.find(Locator::Css("#ov-seq")).await.unwrap().text().await.unwrap();
        assert_eq!(seq, status["seq"].to_string());
        shot(&c, "overview").await;

        // Add a trusted instance through the form.
        page(&c, &base, "trust").await;
        text_until(&c, "#trust-rows", "the empty trust table", |t| t.contains("no trusted")).await;
        c.find(Locator::Css("#trust-card")).await.unwrap().send_keys(&other_card).await.unwrap();
        c.find(Locator::Css("#trust-role")).await.unwrap().select_by_value("blind").await.unwrap();
        c.find(Locator::Css("#trust-add")).await.unwrap().click().await.unwrap();
        let rows = text_until(&c, "#trust-rows", "the new trust row", |t| t.contains("other-node")).await;
        assert!(rows.contains("blind"), "{rows}");
        assert!(rows.contains("Clone configuration from peer"), "{rows}");
        assert!(rows.contains("Force refresh and re-key peer"), "{rows}");
        shot(&c, "trust").await;

        page(&c, &base, "sync").await;
        text_until(&c, "#up-rows", "the upstreams", |t| !t.is_empty()).await;
        shot(&c, "sync").await;

        page(&c, &base, "objects").await;
        let rows = text_until(&c, "#obj-rows", "the objects", |t| t.contains("bbs.toml")).await;
        assert!(rows.contains("applet"), "{rows}");
        shot(&c, "objects").await;

        // Run a backup from the backups page and see it listed.
        page(&c, &base, "backups").await;
        text_until(&c, "#bk-rows", "the empty backup list", |t| t.contains("no snapshots")).await;
        c.find(Locator::Css("#bk-desc")).await.unwrap().send_keys("from the browser").await.unwrap();
        c.find(Locator::Css("#bk-run")).await.unwrap().click().await.unwrap();
        let listed = text_until(&c, "#bk-rows", "the new snapshot", |t| t.contains("Verify")).await;
        shot(&c, "backups").await;

        page(&c, &base, "events").await;
        text_until(&c, "#ev-list", "the event log", |t| t.contains("job.finished")).await;
        shot(&c, "events").await;

        // Phone width: the overview still fits.
        c.set_window_size(390, 844).await.unwrap();
        page(&c, &base, "overview").await;
        text_until(&c, "#ov-name", "the overview", |t| !t.is_empty()).await;
        let overflow = c
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth + 1;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(overflow, json!(false), "the overview is wider than a phone screen");
        shot(&c, "overview-phone").await;
        c.close().await.unwrap();
        listed
    });
    // The trust and the backup are real: the CLI sees them.
    let trusted = json(&data, &["trust", "list"]);
    assert_eq!(trusted[0]["name"], "other-node");
    assert_eq!(trusted[0]["role"], "blind");
    let snaps = json(&data, &["backups", "list"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["description"], "from the browser");
    assert!(
        listed.contains(snaps[0]["id"].as_str().unwrap()),
        "{listed}"
    );
    Ok(())
}
