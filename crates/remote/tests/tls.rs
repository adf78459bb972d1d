//! An https server whose certificate a private authority signed (openssl's
//! own test server): without --ca-cert every request is refused alike, so
//! the failure is fatal at once, says why and names the flag; with it, the
//! server is trusted.

use std::{
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use wrpo_remote::{Client, Failure, RemoteOptions};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        _ = self.0.kill();
        _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("openssl");
    c.current_dir(dir).args(args);
    c
}

/// A private certificate authority (ca.pem), a certificate it signed for 127.0.0.1
/// (cert.pem), and `openssl s_server -WWW` serving `dir` with it.
fn https_server(dir: &Path) -> (Server, String) {
    std::fs::write(dir.join("leaf.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
    for step in [
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=wrpo test CA"][..],
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"],
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "leaf.cnf",
        ],
    ] {
        let made = openssl(dir, step).output().expect("openssl (Debian's openssl package) makes the test's certificates");
        assert!(made.status.success(), "openssl {step:?}: {}", String::from_utf8_lossy(&made.stderr));
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = openssl(dir, &["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert", "cert.pem", "-key", "key.pem", "-WWW", "-quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("https://127.0.0.1:{port}/models.json"))
}

#[test]
fn a_private_certificate_is_fatal_at_once_and_ca_cert_trusts_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("models.json"), r#"{"data":[{"id":"m"}]}"#).unwrap();
    let (_server, url) = https_server(dir.path());

    let client = Client::new(&RemoteOptions { retries: 3, ..Default::default() }).unwrap();
    let start = Instant::now();
    match client.with_retries(|| client.call(&url, None)) {
        Err(Failure::Fatal(message)) => assert!(message.contains("TLS") && message.contains("--ca-cert"), "{message}"),
        other => panic!("expected a fatal TLS failure, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2), "retried: {:?}", start.elapsed());

    let trusting = Client::new(&RemoteOptions { ca_cert: Some(dir.path().join("ca.pem")), ..Default::default() }).unwrap();
    let listing = trusting.call(&url, None).unwrap_or_else(|f| panic!("{}", f.message()));
    assert_eq!(listing["data"][0]["id"], "m");

    // A file without a certificate is refused when the client is made, naming it.
    let err = Client::new(&RemoteOptions { ca_cert: Some(dir.path().join("key.pem")), ..Default::default() }).err().unwrap().to_string();
    assert!(err.contains("key.pem") && err.contains("no certificate"), "{err}");
}
