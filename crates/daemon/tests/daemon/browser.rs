//! The dashboard in a real browser (issue 18): headless Debian Chromium driven through
//! chromedriver by fantoccini (WebDriver). It loads the overview, sees a job published with
//! the CLI appear in the jobs list and finish, opens it and reads its output, requeues a dead
//! letter from the page and sees it run, and saves screenshots under the target directory
//! (`target/tmp/screenshots/`). Every wait is for an element, with a deadline.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use crate::web;

const WAIT: Duration = Duration::from_secs(30);

/// chromedriver on a free port, ended on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver and waits for the line it prints once it listens.
    fn start() -> Driver {
        let bin = "/usr/bin/chromedriver";
        assert!(
            std::path::Path::new(bin).exists(),
            "chromedriver is missing: `cargo xtask test` installs it (Debian's chromium-driver)"
        );
        let port = web::free_port();
        let mut child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT).expect("chromedriver said it started");
        Driver { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1000", "--hide-scrollbars"]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await.expect("a session")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).expect("save screenshot");
}

async fn element(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("waiting for {css}: {e}"))
}

/// Clicks the element `css` names, finding it again if the page redrew it meanwhile.
async fn click(c: &Client, css: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match element(c, css).await.click().await {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("stale") => {}
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
}

#[test]
fn daemon_browser_dashboard_follows_jobs_and_requeues() {
    let tasks = r#"[[task]]
name = "ok"
routing_keys = ["ok.#"]
command = ["sh", "-c", "echo \"got $(cat)\"; echo 'a line on stderr' >&2"]
max_workers = 2

[[task]]
name = "bad"
routing_keys = ["bad.#"]
command = ["sh", "-c", "echo 'trying'; test -e {dir}/fixed || { echo 'not fixed yet' >&2; exit 3; }"]
max_attempts = 2
backoff_initial = "50ms"

[[schedule]]
name = "nightly"
cron = "0 3 * * *"
routing_key = "ok.nightly"
"#;
    let (mut sb, base) = web::sandbox(tasks, "");
    sb.start();
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let c = browser(&driver).await;

        // The overview: a card per task, live.
        c.goto(&format!("{base}/")).await.expect("open the page");
        element(&c, ".card[data-task=\"ok\"]").await;
        element(&c, ".card[data-task=\"bad\"]").await;
        element(&c, "#live.on").await;
        // The schedules table under the cards.
        let nightly = element(&c, "#schedules-table tr[data-name=\"nightly\"]").await;
        assert!(nightly.text().await.expect("text").contains("cron 0 3 * * * in UTC"));

        // The jobs list: a job published through the CLI appears and finishes.
        c.goto(&format!("{base}/#/jobs")).await.expect("jobs");
        let out = sb.cli(&["publish", "ok.browser", "from the browser test"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let row = format!("#jobs-table tr[data-id=\"{id}\"]");
        element(&c, &format!("{row} .state.done")).await;
        shot(&c, "jobs").await;

        // Its page: attempts, exit code, output.
        click(&c, &format!("{row} a")).await;
        element(&c, "#job-state.done").await;
        let stdout = element(&c, ".attempt[data-attempt=\"1\"] pre.stdout").await;
        assert_eq!(stdout.text().await.expect("text"), "got from the browser test");
        let stderr = element(&c, ".attempt[data-attempt=\"1\"] pre.stderr").await;
        assert_eq!(stderr.text().await.expect("text"), "a line on stderr");
        let head = element(&c, ".attempt[data-attempt=\"1\"] .end").await;
        assert!(head.text().await.expect("text").contains("exit code 0"));
        shot(&c, "job").await;

        // A dead letter, requeued from the page once its cause is fixed, runs and is done.
        let out = sb.cli(&["publish", "bad.browser", "x"]);
        let dead = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        c.goto(&format!("{base}/#/dead")).await.expect("dead letters");
        let dead_row = format!("#dead-table tr[data-id=\"{dead}\"]");
        element(&c, &format!("{dead_row} button.requeue")).await;
        shot(&c, "dead").await;
        std::fs::write(sb.path().join("fixed"), "").expect("fix");
        click(&c, &format!("{dead_row} button.requeue")).await;
        element(&c, "#toast:not(.hidden)").await;
        c.goto(&format!("{base}/#/jobs/{dead}")).await.expect("the requeued job");
        element(&c, "#job-state.done").await;
        let attempts = c.find_all(Locator::Css("#attempts .attempt")).await.expect("attempts");
        assert_eq!(attempts.len(), 3, "two failed attempts, then the one after the requeue");

        // The overview once more, with counts and the chart, for the record.
        c.goto(&format!("{base}/#/")).await.expect("overview");
        element(&c, ".card[data-task=\"ok\"] .done").await;
        c.wait()
            .at_most(WAIT)
            .for_element(Locator::XPath(
                "//div[@data-task='bad']//b[contains(@class,'done') and text()='1']",
            ))
            .await
            .expect("the overview counts the requeued job");
        shot(&c, "overview").await;
        c.close().await.expect("close the browser");
    });
}
