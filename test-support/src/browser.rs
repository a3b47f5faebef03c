//! Headless Chromium driven over its DevTools protocol: what the view's tests and benchmarks
//! load the page in.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{wait_until, KillOnDrop};

/// Headless Chromium showing `url`, and its DevTools WebSocket of that page; the whole process
/// group is killed on drop.
pub struct Browser {
    child: KillOnDrop,
    _profile: tempfile::TempDir,
    page: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Browser {
    pub fn open(url: &str) -> Self {
        let profile = tempfile::tempdir().unwrap();
        // a process group of its own: the browser's helper processes end with it
        let mut child: Child = Command::new("chromium")
            .process_group(0)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0"])
            .arg("--window-size=1100,700")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"; the rest of its
        // stderr is drained (a closed pipe would end the browser at its next message)
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    let _ = sender.send(rest.split('/').next().and_then(|p| p.parse::<u16>().ok()));
                }
            }
        });
        let port = receiver.recv_timeout(Duration::from_secs(60)).ok().flatten();
        let port = port.expect("chromium did not open its DevTools port");
        let child = KillOnDrop(child);
        // the page's own DevTools socket, from the list of targets
        let mut target = None;
        assert!(wait_until(Duration::from_secs(30), || {
            target = http_get(&format!("127.0.0.1:{port}"), "/json/list").and_then(|body| {
                let list: serde_json::Value = serde_json::from_str(&body).ok()?;
                list.as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            target.is_some()
        }));
        let target = target.unwrap();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (page, _) = tungstenite::client::client(target.as_str(), stream).unwrap();
        Self { child, _profile: profile, page, next_id: 1 }
    }

    /// Calls a DevTools method and returns its `result`.
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = serde_json::json!({ "id": id, "method": method, "params": params });
        self.page.send(tungstenite::Message::text(request.to_string())).unwrap();
        loop {
            let message = self.page.read().unwrap();
            let Ok(text) = message.to_text() else { continue };
            let reply: serde_json::Value = serde_json::from_str(text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self
            .call("Runtime.evaluate", serde_json::json!({ "expression": expression, "returnByValue": true }));
        result["result"]["value"].clone()
    }

    /// The bricks shown now: (VM name, frames drawn, pages seen changing).
    pub fn bricks(&mut self) -> Vec<(String, u64, Vec<u64>)> {
        let value = self.eval(
            "[...document.querySelectorAll('.brick')].map(b => [b.dataset.vm, Number(b.dataset.frames), \
             b.dataset.changedPages])",
        );
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|brick| {
                let changed =
                    brick[2].as_str().unwrap_or("").split_whitespace().filter_map(|p| p.parse().ok());
                (brick[0].as_str().unwrap().to_string(), brick[1].as_u64().unwrap(), changed.collect())
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::SIGKILL);
    }
}

/// The body of `GET path` from `host`, if it answered (read up to its Content-Length: the
/// DevTools server keeps the connection open).
pub fn http_get(host: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut reader = std::io::BufReader::new(stream);
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = vec![0u8; length?];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

/// `qemu-bridge view --listen 127.0.0.1:0` of `run_dir` with `extra` arguments (killed on
/// drop), and the address it serves.
pub fn start_view(run_dir: &std::path::Path, extra: &[&str]) -> (KillOnDrop, std::net::SocketAddr) {
    let mut child = Command::new(crate::binary())
        .args(["view", "--listen", "127.0.0.1:0", "--run-dir"])
        .arg(run_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // "serving the VMs of DIR on http://ADDRESS/"
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().rsplit("http://").next().unwrap().trim_end_matches('/').parse().unwrap();
    (KillOnDrop(child), address)
}
