//! The file store on the real binary: SIGHUP reads the configuration file's apps again (a new
//! app serves at once; an app taken out has its connections closed with 4001); a file that
//! does not check is refused with the reason logged and the apps stay; the admin API reads the
//! file's apps, refuses writes with 405, needs the token (401) and is off without one (404).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::admin::*;
use common::*;

fn hangup(node: &Herald) {
    let ok = Command::new("kill")
        .args(["-HUP", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn sighup_reloads_the_apps_and_a_bad_file_keeps_them() {
    let admin_cfg = format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n");
    let h = Herald::start_logged("", &format!("{admin_cfg}{}", default_apps())).await;
    let (status, ready) = readyz(&h).await;
    assert_eq!((status, ready["apps_store"].as_str()), (200, Some("ok")));
    assert_eq!(refused(&h, "key-new").await.0, 4001);
    let mut old = h.client().await;
    old.subscribe("news").await;

    // A good file with one more app: served after SIGHUP.
    let path = h.dir.0.join("herald.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let added =
        format!("{original}\n[[apps]]\nid = \"new\"\nkey = \"key-new\"\nsecret = \"secret-new\"\n");
    std::fs::write(&path, &added).unwrap();
    hangup(&h);
    let (mut new, took) = connect_within(&h, "key-new", Duration::from_secs(2)).await;
    println!("SIGHUP → new app served in {took:?}");
    assert_eq!(h.api().trigger(&["news"], "e", "1", None).await.0, 200);
    old.recv_event("e").await;

    // A file that does not check: refused, logged, and every app stays as it was.
    std::fs::write(
        &path,
        format!("{added}\n[[apps]]\nid = \"bad id\"\nkey = \"k\"\nsecret = \"s\"\n"),
    )
    .unwrap();
    hangup(&h);
    let node = &h;
    within(
        Duration::from_secs(3),
        "the bad file is refused",
        || async move { node.stdout().contains("configuration file refused") },
    )
    .await;
    assert!(
        h.stdout().contains("apps[5].id"),
        "the log names the key: {}",
        h.stdout()
    );
    connect_within(&h, "key-new", Duration::from_secs(1)).await;
    connect_within(&h, KEY, Duration::from_secs(1)).await;
    assert!(
        h.metric("herald_apps_store_reloads_total{outcome=\"error\"}")
            .await
            >= 1.0
    );

    // The app taken out of the file: its open connection closed with 4001, then unknown.
    std::fs::write(&path, &original).unwrap();
    hangup(&h);
    assert_eq!(new.expect_close().await.0, 4001);
    assert_eq!(refused(&h, "key-new").await.0, 4001);
    assert_eq!(h.api().trigger(&["news"], "e2", "1", None).await.0, 200);
    old.recv_event("e2").await;

    // The admin API reads the file's apps and refuses writes.
    let port = h.admin_port;
    let (status, list) = admin(port, "GET", "/admin/apps", Some(ADMIN_TOKEN), "").await;
    assert_eq!((status, list["driver"].as_str()), (200, Some("file")));
    assert_eq!(list["apps"].as_array().unwrap().len(), 4);
    assert!(!list.to_string().contains(SECRET), "{list}");
    let (status, body) = admin(port, "PUT", "/admin/apps/app1", Some(ADMIN_TOKEN), "{}").await;
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].as_str().unwrap().contains("SIGHUP"), "{body}");
    assert_eq!(
        admin(port, "DELETE", "/admin/apps/app1", Some(ADMIN_TOKEN), "")
            .await
            .0,
        405
    );
    assert_eq!(admin(port, "GET", "/admin/apps", None, "").await.0, 401);
    connect_within(&h, KEY, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let h = Herald::start().await;
    let (status, body) = admin(h.admin_port, "GET", "/admin/apps", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("[admin] token"),
        "{body}"
    );
}

#[tokio::test]
async fn migrate_needs_a_database_store() {
    let (ok, out, err) = migrate(&default_apps()).await;
    assert!(!ok, "{out}");
    assert!(err.contains("nothing to migrate"), "{err}");
}
