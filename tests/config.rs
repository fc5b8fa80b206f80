//! Configuration errors stop start-up with a message naming the key; environment variables and
//! flags override the file; `--check-config` validates without serving.

use std::process::Command;

fn bin() -> String {
    std::env::var("RINGPUSH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringpush").into())
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ringpush-cfg-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, text).expect("write config");
    p
}

/// Runs `ringpush --check-config` and returns (success, stdout + stderr).
fn check(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("--check-config").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ringpush");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const APP: &str = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n";

#[test]
fn bad_configurations_name_the_key() {
    let cases = [
        ("unknown", format!("[server]\nprot = 1\n{APP}"), "prot"),
        ("badvalue", format!("[server]\nport = \"x\"\n{APP}"), "port"),
        (
            "zero",
            format!("[server]\nactivity_timeout = 0\n{APP}"),
            "activity_timeout",
        ),
        (
            "dupkey",
            format!("{APP}[[apps]]\nid = \"b\"\nkey = \"k\"\nsecret = \"t\"\n"),
            "apps[1].key",
        ),
        ("noapps", "[server]\nport = 1\n".to_string(), "apps"),
        (
            "hook",
            format!("{APP}[[apps.webhooks]]\nurl = \"ftp://x\"\n"),
            "apps[0].webhooks[0].url",
        ),
        (
            "hugetimeout",
            format!("[server]\nhandshake_timeout = 9223372036854775807\n{APP}"),
            "server.handshake_timeout",
        ),
        (
            "hugettl",
            format!("{APP}cache_ttl = 9999999999999\n"),
            "apps[0].cache_ttl",
        ),
        (
            "smallbodybudget",
            format!("[server]\nmax_pending_body_bytes = 65536\n{APP}"),
            "server.max_pending_body_bytes",
        ),
        (
            "hookheader",
            format!(
                "{APP}[[apps.webhooks]]\nurl = \"http://127.0.0.1:9/\"\nheaders = {{ \"bad name\" = \"v\" }}\n"
            ),
            "apps[0].webhooks[0].headers",
        ),
    ];
    for (name, text, key) in cases {
        let path = write(name, &text);
        let (ok, out) = check(&["--config", path.to_str().expect("utf8")], &[]);
        let _ = std::fs::remove_file(&path);
        assert!(!ok, "{name} must be refused: {out}");
        assert!(
            out.contains(key),
            "{name}: message should name {key}: {out}"
        );
    }
}

#[test]
fn environment_and_flags_override_the_file() {
    let path = write("ok", &format!("[server]\nworkers = 1\n{APP}"));
    let p = path.to_str().expect("utf8");
    let (ok, out) = check(&["--config", p], &[("RINGPUSH_SERVER__WORKERS", "3")]);
    assert!(ok, "{out}");
    assert!(out.contains("3 shard(s)"), "{out}");
    let (ok, out) = check(
        &["--config", p, "--workers", "4", "--port", "7123"],
        &[("RINGPUSH_SERVER__WORKERS", "3")],
    );
    assert!(ok, "{out}");
    assert!(out.contains(":7123, 4 shard(s)"), "{out}");
    let (ok, out) = check(&["--config", p], &[("RINGPUSH_SERVER__PORT", "not-a-port")]);
    assert!(!ok && out.contains("port"), "{out}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn development_default_without_a_file() {
    let (ok, out) = check(&[], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("127.0.0.1:6001"), "{out}");
    assert!(out.contains("app-id (key app-key"), "{out}");
    assert!(
        out.contains("development default"),
        "the warning is shown: {out}"
    );
}
