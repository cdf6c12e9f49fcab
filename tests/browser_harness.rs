//! Self-test of the browser harness (tests/support/browser.rs) against a tiny
//! page server: fill a field, click a button, follow a 303 to a callback on
//! a dead port and read the code from the URL, save a screenshot, clean up.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::browser::Browser;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const FORM_PAGE: &str = "<!doctype html><html><head><meta name=viewport content=\"width=device-width\"><title>Sign in</title></head><body>\
<form method=post action=/submit><label for=u>User</label><input id=u name=username>\
<button name=decision value=approve>Approve</button><button name=decision value=deny>Deny</button></form>\
</body></html>";

/// A page server: `GET /` is the form, `POST /submit` answers `303` to
/// `callback` and reports the form fields it received.
struct PageServer {
    addr: SocketAddr,
    forms: mpsc::UnboundedReceiver<Vec<(String, String)>>,
    task: JoinHandle<()>,
}

impl PageServer {
    async fn start(callback: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, forms) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (tx, callback) = (tx.clone(), callback.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (tx, callback) = (tx.clone(), callback.clone());
                        async move { Ok::<_, Infallible>(page(req, &callback, tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        PageServer { addr, forms, task }
    }

    async fn next_form(&mut self) -> Vec<(String, String)> {
        tokio::time::timeout(Duration::from_secs(5), self.forms.recv())
            .await
            .expect("the server received a form")
            .expect("server running")
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn page(
    req: Request<Incoming>,
    callback: &str,
    tx: mpsc::UnboundedSender<Vec<(String, String)>>,
) -> Response<Full<Bytes>> {
    let reply = Response::builder();
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/") => reply.header("content-type", "text/html; charset=utf-8").body(Full::from(FORM_PAGE)),
        (Method::POST, "/submit") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let _ = tx.send(form_urlencoded::parse(&body).into_owned().collect());
            reply.status(StatusCode::SEE_OTHER).header("location", callback).body(Full::default())
        }
        _ => reply.status(StatusCode::NOT_FOUND).body(Full::default()),
    }
    .expect("valid response")
}

/// A loopback port nothing listens on (bound, then released).
async fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr")
}

fn query(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

#[tokio::test]
async fn fill_click_redirect_to_dead_callback() {
    let callback = format!("http://{}/callback", dead_addr().await);
    let mut server = PageServer::start(format!("{callback}?code=abc&state=xyz")).await;
    let Some(browser) = Browser::start().await else { return };

    browser.goto(&format!("http://{}/", server.addr)).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "Sign in");
    let viewport = browser.execute("return [innerWidth, innerHeight]", vec![]).await.unwrap();
    assert_eq!(viewport, serde_json::json!([412, 915]), "a phone-sized viewport");
    assert_eq!(browser.current_url().await.unwrap(), format!("http://{}/", server.addr));
    assert!(browser.page_source().await.unwrap().contains("<label for=\"u\">User</label>"));
    assert_eq!(browser.find_css("label[for=u]").await.unwrap().text().await.unwrap(), "User");
    let missing = browser.find_css("#no-such-thing").await.err().expect("no element");
    assert!(missing.is_no_such_element(), "{missing}");

    let user = browser.find_css("#u").await.unwrap();
    assert_eq!(user.attribute("name").await.unwrap().as_deref(), Some("username"));
    assert_eq!(user.attribute("placeholder").await.unwrap(), None);
    user.send_keys("alice").await.unwrap();
    assert_eq!(user.property("value").await.unwrap(), "alice");

    let png = browser.screenshot_png().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let path = browser.save_screenshot("browser_harness-form").await.unwrap();
    assert!(path.ends_with("target/browser-screenshots/browser_harness-form.png"), "{}", path.display());
    assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));

    let approve = browser.find_css("button[value=approve]").await.unwrap();
    assert_eq!(approve.text().await.unwrap(), "Approve");
    approve.click().await.unwrap();

    let landed = browser.wait_for_url(|u| u.starts_with(&callback), Duration::from_secs(10)).await.unwrap();
    let params = query(&landed);
    assert!(params.contains(&("code".into(), "abc".into())), "{landed}");
    assert!(params.contains(&("state".into(), "xyz".into())), "{landed}");

    let form = server.next_form().await;
    assert_eq!(
        form,
        vec![("username".to_string(), "alice".to_string()), ("decision".to_string(), "approve".to_string())]
    );
}

#[tokio::test]
async fn goto_a_refused_url_keeps_it_and_wait_for_url_is_bounded() {
    let Some(browser) = Browser::start().await else { return };
    let target = format!("http://{}/callback?code=c%2Fd&state=s", dead_addr().await);
    let refused = browser.goto(&target).await.expect_err("goto reports the refused connection");
    assert!(refused.is_net_error() && refused.message.contains("ERR_CONNECTION_REFUSED"), "{refused:?}");
    // The browser is still usable, on Chromium's error page, at the target.
    assert_eq!(browser.current_url().await.unwrap(), target);
    assert_eq!(query(&target), vec![("code".into(), "c/d".into()), ("state".into(), "s".into())]);

    let started = Instant::now();
    let err = browser.wait_for_url(|u| u.contains("never"), Duration::from_millis(300)).await.unwrap_err();
    assert!(err.to_string().contains("still on"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let err = browser.wait_for_css("#absent", Duration::from_millis(200)).await.err().expect("times out");
    assert!(err.to_string().contains("no element"), "{err}");
}

#[tokio::test]
async fn drop_ends_chromedriver_and_chromium() {
    let Some(browser) = Browser::start().await else { return };
    let driver = browser.driver_pid();
    let chromium = browser.browser_pid().expect("chromedriver reports Chromium's pid");
    assert!(alive(driver) && alive(chromium));
    let dropping = Instant::now();
    drop(browser);
    eprintln!("browser: dropped in {} ms", dropping.elapsed().as_millis());
    assert!(!alive(driver), "chromedriver {driver} outlived the Browser");
    // Chromium quit with the session (chromedriver waits for it), or was
    // killed; allow it a bounded moment to finish exiting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(chromium) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(chromium), "Chromium {chromium} outlived the Browser");
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')').is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
    })
}
