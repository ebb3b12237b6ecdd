//! `bdh data fetch` against a server on the loopback interface started here:
//! a checked download, a wrong checksum, an oversized body, a file already in
//! place, and no server at all.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{temp, text};

/// Where the download goes by default, relative to the current directory.
const DEST: &str = "data/tinyshakespeare.txt";
/// The bound on a download: tiny Shakespeare's 1115394 bytes and 4 MiB.
const MAX_BYTES: usize = 1_115_394 + (4 << 20);

/// `bdh data fetch ARGS` run in `dir`, with no proxy between it and the loopback server.
fn fetch(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bdh"));
    c.current_dir(dir).args(["data", "fetch"]).args(args);
    for var in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        c.env_remove(var);
    }
    let o = c.output().expect("bdh runs");
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    o
}

/// Serves `body` to each of `times` requests on a fresh loopback port, with its
/// Content-Length if `length` (else the end of the body is the closed connection);
/// the URL of the file.
fn serve(body: Vec<u8>, length: bool, times: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(times) {
            let Ok(mut stream) = stream else { continue };
            // The request's head, to its blank line.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let mut answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n".to_vec();
            if length {
                answer.extend(format!("Content-Length: {}\r\n", body.len()).bytes());
            }
            answer.extend(b"\r\n");
            // The client may hang up once it has seen enough: errors are its refusal.
            let _ = stream.write_all(&answer).and_then(|_| stream.write_all(&body));
        }
    });
    format!("http://127.0.0.1:{port}/tinyshakespeare/input.txt")
}

/// A URL on a loopback port nothing listens on.
fn refused_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}/input.txt")
}

/// A text of our own, to stand for the real one.
fn payload() -> Vec<u8> {
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n".repeat(200).into_bytes()
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The names in `dir`, or none if it does not exist.
fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map_or(Vec::new(), |d| d.map(|e| e.unwrap().file_name().to_string_lossy().into()).collect())
}

#[test]
fn a_checked_download_lands_in_data_and_a_second_fetch_downloads_nothing() {
    let tmp = temp("fetch-ok");
    let body = payload();
    let (url, sum) = (serve(body.clone(), true, 1), sha256(&body));
    let o = fetch(tmp.path(), &["--url", &url, "--sha256", &sum]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains(&format!("wrote {DEST}")) && out.contains(&sum), "{out}");
    assert_eq!(std::fs::read(tmp.path().join(DEST)).unwrap(), body);
    assert_eq!(names(&tmp.path().join("data")), ["tinyshakespeare.txt"], "no temporary file is left");

    // The file is there and checks: nothing is fetched (the URL has no server).
    let o = fetch(tmp.path(), &["--url", &refused_url(), "--sha256", &sum.to_uppercase()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains(&format!("{DEST} is already there")), "{out}");
    assert_eq!(std::fs::read(tmp.path().join(DEST)).unwrap(), body);
}

#[test]
fn a_download_with_another_checksum_is_refused_and_nothing_is_left() {
    let tmp = temp("fetch-sum");
    let url = serve(payload(), true, 2);
    let o = fetch(tmp.path(), &["--url", &url, "--sha256", &sha256(b"another file")]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("not the file expected") && out.contains("nothing was written"), "{out}");
    assert!(names(&tmp.path().join("data")).is_empty(), "{:?}", names(&tmp.path().join("data")));

    // Without --sha256 the download must be tiny Shakespeare itself.
    let o = fetch(tmp.path(), &["--url", &url, "--out", "t.txt"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("1115394 bytes, SHA-256 86c4e6aa"), "{out}");
    assert_eq!(names(tmp.path()), Vec::<String>::new());

    let o = fetch(tmp.path(), &["--url", &url, "--sha256", "abc"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("64 hex digits"), "{}", text(&o));
}

#[test]
fn an_oversized_download_is_refused_whether_or_not_it_says_its_length() {
    let tmp = temp("fetch-big");
    let body = vec![b'a'; MAX_BYTES + 1];
    let sum = sha256(&body);
    for length in [true, false] {
        let o = fetch(tmp.path(), &["--url", &serve(body.clone(), length, 1), "--sha256", &sum]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{out}");
        assert!(out.contains(&format!("past the {MAX_BYTES}")) || out.contains("more than"), "{out}");
        assert!(out.contains("refused, nothing was written"), "{out}");
        assert!(names(&tmp.path().join("data")).is_empty());
    }
}

#[test]
fn a_different_file_in_place_is_kept_byte_for_byte() {
    let tmp = temp("fetch-kept");
    let dest = tmp.path().join(DEST);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let mine = b"my own notes, not Shakespeare\n\xff".to_vec();
    std::fs::write(&dest, &mine).unwrap();
    let body = payload();
    let url = serve(body.clone(), true, 2);
    for sum in [Some(sha256(&body)), None] {
        let mut args = vec!["--url", &url];
        if let Some(sum) = &sum {
            args.extend(["--sha256", sum]);
        }
        let o = fetch(tmp.path(), &args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{out}");
        assert!(out.contains(&format!("{DEST} exists and is not the file wanted")), "{out}");
        assert!(out.contains("it is kept as it is"), "{out}");
        assert_eq!(std::fs::read(&dest).unwrap(), mine);
        assert_eq!(names(&tmp.path().join("data")), ["tinyshakespeare.txt"]);
    }
}

#[test]
fn no_server_says_what_to_do_offline() {
    let tmp = temp("fetch-offline");
    let o = fetch(tmp.path(), &["--url", &refused_url()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    for want in ["downloading http://127.0.0.1:", "Without a network", "--data FILE", "not be comparable"] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
}
