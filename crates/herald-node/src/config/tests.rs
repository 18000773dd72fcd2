//! Configuration tests: layers, unknown keys, validation, redaction.

use super::*;
use figment::Jail;

#[test]
fn file_then_env() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "h.toml",
            r#"
            [server]
            listen = "127.0.0.1:7000"
            [[apps]]
            id = "1"
            key = "k"
            secret = "s"
            "#,
        )?;
        jail.set_env("HERALD_SERVER__ADMIN_LISTEN", "127.0.0.1:7001");
        // Not configuration: Kubernetes service links and tool variables.
        jail.set_env("HERALD_PORT", "tcp://10.0.0.1:8080");
        jail.set_env("HERALD_SERVICE_HOST", "10.0.0.1");
        jail.set_env("HERALD_BIN", "/usr/bin/herald");
        let c = load(Some(Path::new("h.toml"))).expect("loads");
        assert_eq!(c.server.listen, "127.0.0.1:7000");
        assert_eq!(c.server.admin_listen, "127.0.0.1:7001");
        assert!(c.apps[0].client_events);
        jail.set_env("HERALD_SERVER__LISTEN", "127.0.0.1:7002");
        assert_eq!(
            load(Some(Path::new("h.toml")))
                .expect("loads")
                .server
                .listen,
            "127.0.0.1:7002"
        );
        Ok(())
    });
}

#[test]
fn unknown_keys_are_named() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "h.toml",
            "[server]\nlisten = \"127.0.0.1:7000\"\nlisten_port = 3\n",
        )?;
        let err = load(Some(Path::new("h.toml"))).expect_err("unknown key");
        assert!(
            err.starts_with("server.listen_port: unknown field"),
            "{err}"
        );
        assert!(!err.contains("default."), "{err}");
        jail.create_file(
            "a.toml",
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nclient_event = true\n",
        )?;
        let err = load(Some(Path::new("a.toml"))).expect_err("unknown key");
        assert!(err.contains("apps.0.client_event: unknown field"), "{err}");
        Ok(())
    });
}

#[test]
fn reverb_variables_fill_in_and_herald_wins() {
    Jail::expect_with(|jail| {
        jail.set_env("REVERB_APP_ID", "rid");
        jail.set_env("REVERB_APP_KEY", "rkey");
        jail.set_env("REVERB_APP_SECRET", "rsecret");
        jail.set_env("REVERB_SERVER_HOST", "127.0.0.1");
        jail.set_env("REVERB_SERVER_PORT", "6001");
        let c = load(None).expect("loads");
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].key, "rkey");
        assert_eq!(c.server.listen, "127.0.0.1:6001");
        jail.set_env("HERALD_SERVER__LISTEN", "127.0.0.1:6002");
        assert_eq!(load(None).expect("loads").server.listen, "127.0.0.1:6002");
        Ok(())
    });
}

#[test]
fn bad_values_are_named() {
    Jail::expect_with(|jail| {
        jail.create_file("h.toml", "[bus]\ndriver = \"kafka\"\n")?;
        assert!(load(Some(Path::new("h.toml")))
            .expect_err("bad")
            .contains("bus.driver"));
        jail.create_file("l.toml", "[server]\nlisten = \"nope\"\n")?;
        assert!(load(Some(Path::new("l.toml")))
            .expect_err("bad")
            .contains("server.listen"));
        Ok(())
    });
}

#[test]
fn webhook_settings_are_checked() {
    Jail::expect_with(|jail| {
        let app = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
        jail.create_file("ok.toml", &format!("{app}[[apps.webhooks]]\nurl = \"https://example.com/hooks?token=t\"\nevent_types = [\"member_added\"]\n"))?;
        let c = load(Some(Path::new("ok.toml"))).expect("valid");
        assert_eq!(c.apps[0].webhooks.len(), 1);
        assert!(c.apps[0].has_webhooks());
        assert!(!c.redacted().contains("token=t"));
        jail.create_file(
            "url.toml",
            &format!("{app}[[apps.webhooks]]\nurl = \"ftp://example.com\"\n"),
        )?;
        assert!(load(Some(Path::new("url.toml")))
            .expect_err("bad")
            .contains("apps[0].webhooks[0].url"));
        jail.create_file(
            "ev.toml",
            &format!(
                "{app}[[apps.webhooks]]\nurl = \"http://h\"\nevent_types = [\"member_joined\"]\n"
            ),
        )?;
        assert!(load(Some(Path::new("ev.toml")))
            .expect_err("bad")
            .contains("member_joined"));
        Ok(())
    });
}

#[test]
fn ids_that_could_alias_are_refused() {
    Jail::expect_with(|jail| {
        for (file, body, key) in [
            ("n.toml", "[server]\nnode_id = \"n1|x\"\n", "server.node_id"),
            ("b.toml", "[server]\nnode_id = \"a{b}\"\n", "server.node_id"),
            (
                "a.toml",
                "[[apps]]\nid = \"a}b\"\nkey = \"k\"\nsecret = \"s\"\n",
                "apps[0].id",
            ),
            ("p.toml", "[bus]\nkey_prefix = \"h{x\"\n", "bus.key_prefix"),
        ] {
            jail.create_file(file, body)?;
            let err = load(Some(Path::new(file))).expect_err(file);
            assert!(err.contains(key), "{file}: {err}");
        }
        jail.create_file("ok.toml", "[server]\nnode_id = \"herald-0.eu_1\"\n")?;
        assert!(load(Some(Path::new("ok.toml"))).is_ok());
        Ok(())
    });
}

#[test]
fn redaction() {
    let mut c = Config::default();
    c.apps.push(App::new("1", "k", "topsecret"));
    c.bus.url = Some("redis://user:pw@host:6379".into());
    c.admin.token = Some("admin-token-never-logged".into());
    let r = c.redacted();
    assert!(!r.contains("topsecret") && !r.contains("pw@"), "{r}");
    assert!(!r.contains("admin-token-never-logged"), "{r}");
}

#[test]
fn admin_token_from_the_config_or_a_file() {
    Jail::expect_with(|jail| {
        jail.create_file("token", "  file-token-0123456789\n")?;
        jail.create_file("f.toml", "[admin]\ntoken_file = \"token\"\n")?;
        let c = load(Some(Path::new("f.toml"))).expect("valid");
        assert_eq!(
            c.admin.token().expect("ok").as_deref(),
            Some("file-token-0123456789")
        );
        jail.create_file("short.toml", "[admin]\ntoken = \"short\"\n")?;
        assert!(load(Some(Path::new("short.toml")))
            .expect_err("too short")
            .contains("admin.token"));
        jail.create_file("missing.toml", "[admin]\ntoken_file = \"nope\"\n")?;
        assert!(load(Some(Path::new("missing.toml")))
            .expect_err("missing")
            .contains("admin.token_file"));
        assert_eq!(Config::default().admin.token(), Ok(None));
        Ok(())
    });
}

#[test]
fn apps_store_from_the_file_and_the_environment() {
    Jail::expect_with(|jail| {
        assert_eq!(load(None).expect("defaults").apps_store.driver, "file");
        jail.create_file(
            "s.toml",
            "[apps_store]\ndriver = \"postgres\"\nurl = \"postgres://herald:pw@db:5432/herald\"\n",
        )?;
        let c = load(Some(Path::new("s.toml"))).expect("valid");
        assert_eq!(c.apps_store.table, "herald_apps");
        assert_eq!(c.apps_store.secret_grace_seconds, 60);
        assert_eq!(c.source.as_deref(), Some(Path::new("s.toml")));
        let r = c.redacted();
        assert!(!r.contains("pw@") && r.contains("db:5432"), "{r}");
        jail.set_env("HERALD_APPS_STORE__URL", "postgres://other:pw2@db2/herald");
        jail.set_env("HERALD_APPS_STORE__TABLE", "tenants");
        let c = load(Some(Path::new("s.toml"))).expect("valid");
        assert_eq!(
            c.apps_store.url.as_deref(),
            Some("postgres://other:pw2@db2/herald")
        );
        assert_eq!(c.apps_store.table, "tenants");
        jail.create_file("u.toml", "[apps_store]\ndriver = \"file\"\ndsn = \"x\"\n")?;
        let err = load(Some(Path::new("u.toml"))).expect_err("unknown key");
        assert!(err.starts_with("apps_store.dsn: unknown field"), "{err}");
        jail.create_file("m.toml", "[apps_store]\ndriver = \"mysql\"\n")?;
        jail.set_env("HERALD_APPS_STORE__URL", "");
        let err = load(Some(Path::new("m.toml"))).expect_err("no url");
        assert!(err.starts_with("apps_store.url"), "{err}");
        Ok(())
    });
}
