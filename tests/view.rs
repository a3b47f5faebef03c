//! `qemu-bridge view` in a real browser: headless Chromium, driven over its DevTools protocol,
//! loads the page once and is watched as two VMs show up as bricks, their maps are drawn and
//! updated where the guest writes, and a stopped VM disappears without a reload. Also: the
//! server binds only where told, refuses WebSockets from other origins, and a bad `--listen` is
//! a one-line error.

use qemu_bridge_test_support as common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::browser::{http_get, Browser};
use common::{
    assert_clean_failure, require_program, require_qemu, wait_until, KillOnDrop, TestRunDir, VmBuilder,
};

/// Page of the guest's counter (0x10040), which the running boot guest writes all the time.
const COUNTER_PAGE: u64 = common::COUNTER_ADDR / 4096;

/// `qemu-bridge view --listen 127.0.0.1:0`, and the address it serves.
fn start_view(run_dir: &TestRunDir) -> (KillOnDrop, SocketAddr) {
    start_view_with(run_dir, &[])
}

/// [`start_view`] with `extra` arguments.
fn start_view_with(run_dir: &TestRunDir, extra: &[&str]) -> (KillOnDrop, SocketAddr) {
    common::browser::start_view(run_dir.path(), extra)
}

/// Standard base64 (the DevTools screenshot), for the test only.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> =
        text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let bits = chunk.iter().fold(0u32, |acc, d| acc << 6 | u32::from(*d)) << (6 * (4 - chunk.len()));
            let bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
            bytes.into_iter().take(chunk.len().saturating_sub(1))
        })
        .collect()
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_view_in_a_real_browser() {
    require_qemu();
    require_program("chromium");
    let run_dir = TestRunDir::new();
    let first = VmBuilder::new("brick", &run_dir).launch();
    let second = VmBuilder::new("brick", &run_dir).memory(128 << 20).launch();
    first.wait_for_marker();
    second.wait_for_marker();
    // some text and some random bytes in the first guest's RAM, for the picture to show
    let text = b"qemu-bridge shows guest memory as pictures. ".repeat(6000);
    let noise = common::noise(256 << 10);
    let ram = std::fs::OpenOptions::new().write(true).open(&first.launched.ram_path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&ram, &text, 8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&ram, &noise, 24 << 20).unwrap();
    let (_server, address) = start_view(&run_dir);
    let mut browser = Browser::open(&format!("http://{address}/"));

    // both bricks, drawn and updated: the running guests write their counter page all the time
    let mut bricks = Vec::new();
    let seen = wait_until(Duration::from_secs(60), || {
        bricks = browser.bricks();
        bricks.len() == 2
            && bricks.iter().all(|(_, frames, changed)| *frames > 3 && changed.contains(&COUNTER_PAGE))
    });
    assert!(seen, "bricks: {bricks:?}");
    let mut names: Vec<&str> = bricks.iter().map(|(name, _, _)| name.as_str()).collect();
    names.sort();
    let mut expected = [first.name(), second.name()];
    expected.sort();
    assert_eq!(names, expected);
    // the map has the side of the VM's RAM: 64 MiB -> 128, 128 MiB -> 256 (next square)
    let sides = browser.eval(&format!(
        "[...document.querySelectorAll('.brick')].filter(b => b.dataset.vm == '{}').map(b => b.querySelector('canvas').width)",
        second.name()
    ));
    assert_eq!(sides, serde_json::json!([256]));
    // the marker page of the first VM is drawn in its class's colour (not a hole)
    let hole = qemu_bridge::ram::PageClass::Hole.color();
    let marker_pixel = browser.eval(&format!(
        "(() => {{ const b = [...document.querySelectorAll('.brick')].find(b => b.dataset.vm == '{}'); \
         const c = b.querySelector('canvas'); const [x, y] = hilbertPoint(c.width, {}); \
         return [...c.getContext('2d').getImageData(x, y, 1, 1).data].slice(0, 3); }})()",
        first.name(),
        common::MARKER_ADDR / 4096
    ));
    assert_ne!(marker_pixel, serde_json::json!(hole), "the marker page is drawn as a hole");

    // a screenshot is a picture, not a blank page
    let shot = browser.call("Page.captureScreenshot", serde_json::json!({ "format": "png" }));
    let png_bytes = base64_decode(shot["data"].as_str().unwrap());
    let mut decoder = png::Decoder::new(std::io::Cursor::new(&png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0u8; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = pixels[..info.buffer_size()].chunks(channels).collect();
    assert!(colours.len() > 20, "a blank screenshot: {} colours", colours.len());
    if let Ok(path) = std::env::var("QEMU_BRIDGE_SCREENSHOT") {
        std::fs::write(path, &png_bytes).unwrap();
    }

    // a VM that stops disappears from the page, which is not reloaded
    drop(second);
    assert!(wait_until(Duration::from_secs(30), || browser.bricks().len() == 1), "{:?}", browser.bricks());
    assert_eq!(browser.bricks()[0].0, first.name());
    // clicking a brick shows its map large, with the address under the cursor
    browser.eval("document.querySelector('.brick').click()");
    browser.call("Input.dispatchMouseEvent", serde_json::json!({ "type": "mouseMoved", "x": 550, "y": 350 }));
    let cursor = browser.eval("document.getElementById('cursor').textContent");
    assert!(cursor.as_str().unwrap().contains("guest-physical 0x"), "{cursor}");
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_view_binds_only_where_told() {
    let run_dir = TestRunDir::new();
    let (_server, address) = start_view(&run_dir);
    assert!(http_get(&address.to_string(), "/").is_some_and(|page| page.contains("<canvas")));
    // loopback 127.0.0.1 only: 127.0.0.2 is loopback too, but not where it was told to listen
    assert!(TcpStream::connect(("127.0.0.2", address.port())).is_err());
    // a page of another origin cannot open the WebSocket; the page's own origin can
    let accepted = |origin: &str| {
        let request =
            tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{address}/ws"))
                .map(|mut request| {
                    request.headers_mut().insert("Origin", origin.parse().unwrap());
                    request
                })
                .unwrap();
        tungstenite::client::client(request, TcpStream::connect(address).unwrap()).is_ok()
    };
    assert!(!accepted("http://evil.example"), "another origin was let in");
    assert!(accepted(&format!("http://{address}")));
    // bad addresses: one line each
    let view = |listen: &str| common::qemu_bridge(&run_dir, &["view", "--listen", listen]);
    assert_clean_failure(&view("localhost:http"), "invalid socket address");
    assert_clean_failure(&view(&address.to_string()), &format!("cannot listen on {address}"));
}

/// A WebSocket client of the view, as the page is: the latest set of VMs it was told of.
struct Watching {
    socket: tungstenite::WebSocket<TcpStream>,
    vms: Vec<serde_json::Value>,
}

impl Watching {
    fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (socket, _) = tungstenite::client::client(format!("ws://{address}/ws"), stream).unwrap();
        Self { socket, vms: Vec::new() }
    }

    /// Reads messages until the VM `name` is shown and `wanted` holds of its summary (within a
    /// minute); that summary.
    fn until(&mut self, name: &str, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(vm) = self.vms.iter().find(|vm| vm["name"] == name && wanted(vm)) {
                return vm.clone();
            }
            assert!(std::time::Instant::now() < deadline, "VM {name} never shown as wanted: {:?}", self.vms);
            if let Ok(tungstenite::Message::Text(text)) = self.socket.read() {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "vms" {
                    self.vms = message["vms"].as_array().unwrap().clone();
                }
            }
        }
    }
}

/// The view follows the run directory without a restart of its own: a VM restarted under the
/// same name with another RAM size is shown anew (new id, new size), a DIMM plugged into a
/// running VM grows its picture, and each picture says how it tracks changes and how fresh it is.
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_view_follows_restarts_and_hot_plugged_memory() {
    require_qemu();
    const MIB: u64 = 1 << 20;
    let run_dir = TestRunDir::new();
    let first = VmBuilder::new("again", &run_dir).launch();
    let name = first.name().to_string();
    let (_server, address) = start_view(&run_dir);
    let mut view = Watching::connect(address);
    let shown = view.until(&name, |vm| vm["ram_size"] == 64 * MIB);
    assert_eq!(shown["tracking"], "fingerprints");
    assert!(shown["sweep_ms"].is_u64(), "{shown}");

    // the same name, a new QEMU with twice the RAM
    drop(first);
    let _second = VmBuilder::new("again", &run_dir).named(&name).memory(128 * MIB).launch();
    let again = view.until(&name, |vm| vm["ram_size"] == 128 * MIB);
    assert_ne!(again["id"], shown["id"], "a new QEMU is a new picture");
    assert_eq!(again["pages"], 128 * MIB / 4096);
    assert_eq!(view.vms.iter().filter(|vm| vm["name"] == name.as_str()).count(), 1, "{:?}", view.vms);

    // a DIMM plugged into a running VM
    let main = run_dir.qemu_output("main.ram");
    let _dimm_vm = common::HandStartedVm::start(&run_dir, "dimm", |_| {
        ["-machine", "q35,accel=tcg,memory-backend=m", "-m", "64M,slots=2,maxmem=1G", "-object"]
            .map(String::from)
            .into_iter()
            .chain([format!("memory-backend-file,id=m,size=64M,share=on,mem-path={}", main.display())])
            .collect()
    });
    view.until("dimm", |vm| vm["ram_size"] == 64 * MIB);
    let dimm = run_dir.qemu_output("dimm.ram");
    common::plug_dimm(&run_dir, "dimm", &dimm, 128 * MIB);
    let grown = view.until("dimm", |vm| vm["ram_size"] == 192 * MIB);
    let regions = grown["regions"].as_array().unwrap();
    assert!(
        regions.iter().any(|region| region["len"] == 128 * MIB && region["offset"] == 64 * MIB),
        "no region for the DIMM: {regions:?}"
    );
}

/// What a WebSocket client of the view has been told of one VM: its summary, its page classes
/// and the last frame it got.
#[derive(Default)]
struct Shown {
    summary: serde_json::Value,
    classes: Vec<u8>,
    seq: u32,
    frames: u64,
}

/// A WebSocket client of the view that keeps each VM's picture up to date, as the page does.
struct Pictures {
    socket: tungstenite::WebSocket<TcpStream>,
    by_id: std::collections::HashMap<u32, Shown>,
}

impl Pictures {
    fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (socket, _) = tungstenite::client::client(format!("ws://{address}/ws"), stream).unwrap();
        Self { socket, by_id: Default::default() }
    }

    /// Takes one message in (or none within the read timeout).
    fn take(&mut self) {
        match self.socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "vms" {
                    for vm in message["vms"].as_array().unwrap() {
                        let id = vm["id"].as_u64().unwrap() as u32;
                        self.by_id.entry(id).or_default().summary = vm.clone();
                    }
                }
            }
            Ok(tungstenite::Message::Binary(bytes)) => {
                let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
                let shown = self.by_id.entry(word(1)).or_default();
                shown.seq = word(5);
                shown.frames += 1;
                match bytes[0] {
                    1 => shown.classes = bytes[9..].to_vec(),
                    2 => {
                        for change in bytes[13..].chunks_exact(5) {
                            let page = u32::from_le_bytes(change[..4].try_into().unwrap()) as usize;
                            if let Some(class) = shown.classes.get_mut(page) {
                                *class = change[4];
                            }
                        }
                    }
                    kind => panic!("a frame of unknown kind {kind}"),
                }
            }
            _ => {}
        }
    }

    /// The VM shown as `name`.
    fn named(&self, name: &str) -> Option<&Shown> {
        self.by_id.values().find(|shown| shown.summary["name"] == name)
    }

    /// Takes messages until every VM of `names` is shown with a picture (within two minutes).
    fn until_shown(&mut self, names: &[String]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !names.iter().all(|name| self.named(name).is_some_and(|shown| !shown.classes.is_empty())) {
            assert!(std::time::Instant::now() < deadline, "not every VM was shown");
            self.take();
        }
    }

    /// Frames of each VM (by name) received during `window`.
    fn count(&mut self, window: Duration) -> std::collections::HashMap<String, u64> {
        let before: Vec<(u32, u64)> = self.by_id.iter().map(|(id, shown)| (*id, shown.frames)).collect();
        let start = std::time::Instant::now();
        while start.elapsed() < window {
            self.take();
        }
        before
            .into_iter()
            .map(|(id, frames)| {
                let shown = &self.by_id[&id];
                (shown.summary["name"].as_str().unwrap_or_default().to_string(), shown.frames - frames)
            })
            .collect()
    }
}

/// Fifty VMs, each at the full frame rate: side by side over the same seconds, a view of 50
/// (never started) VMs gives every one of them at least half the frames a view of a single VM
/// gives its one (the old shared rate gave each of 50 a fiftieth; the rate itself is a
/// benchmark row), and a page written into the 50th VM's RAM, as its guest would, shows in its
/// picture within the sweep the view reports for it (counted in the view's own frames).
#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_view_keeps_fifty_vms_at_the_full_frame_rate() {
    const COUNT: usize = 50;
    const MIB: u64 = 1 << 20;
    let (many_dir, lone_dir) = (TestRunDir::new(), TestRunDir::new());
    let vms = common::never_started_vms("fifty", &many_dir, COUNT, 16 * MIB);
    let lone = common::never_started_vms("lone", &lone_dir, 1, 16 * MIB);
    // fingerprints: this test writes through the RAM file, which soft-dirty bits (QEMU's own
    // writes) would not see
    let (_many_server, many_address) = start_view_with(&many_dir, &["--fingerprints"]);
    let (_lone_server, lone_address) = start_view_with(&lone_dir, &["--fingerprints"]);
    let names: Vec<String> = vms.iter().map(|vm| vm.name().to_string()).collect();
    let lone_name = lone[0].name().to_string();
    let ready = std::sync::Barrier::new(2);
    let window = Duration::from_secs(3);
    let (mut many, (many_frames, lone_frames)) = std::thread::scope(|scope| {
        let alone = scope.spawn(|| {
            let mut pictures = Pictures::connect(lone_address);
            pictures.until_shown(std::slice::from_ref(&lone_name));
            ready.wait();
            pictures.count(window)
        });
        let mut pictures = Pictures::connect(many_address);
        pictures.until_shown(&names);
        ready.wait();
        let counted = pictures.count(window);
        (pictures, (counted, alone.join().unwrap()))
    });
    let alone = lone_frames[&lone_name];
    assert!(alone > 0, "the lone VM got no frames");
    let least = names.iter().map(|name| many_frames.get(name).copied().unwrap_or(0)).min();
    eprintln!("in {window:?}: a lone VM {alone} frames, the least of {COUNT} VMs {least:?}");
    for name in &names {
        let frames = many_frames.get(name).copied().unwrap_or(0);
        assert!(2 * frames >= alone, "VM {name} got {frames} frames while a lone VM got {alone}");
    }

    // a page of data in the 50th VM's untouched RAM
    let last = &vms[COUNT - 1];
    const PAGE: usize = (8 * MIB / 4096) as usize;
    let before = many.named(last.name()).unwrap().classes[PAGE];
    let seq_at_write = many.named(last.name()).unwrap().seq;
    let ram = std::fs::OpenOptions::new().write(true).open(&last.launched.ram_path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&ram, &common::noise(4096), PAGE as u64 * 4096).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while many.named(last.name()).unwrap().classes[PAGE] == before {
        assert!(std::time::Instant::now() < deadline, "the page written was never shown");
        many.take();
    }
    let shown = many.named(last.name()).unwrap();
    let sweep_ms = shown.summary["sweep_ms"].as_u64().expect("a sweep time reported with fingerprints");
    // frames of 1/60 s that one reported sweep spans, and one more sweep for a write that
    // landed just behind the sweep's cursor
    let frames_per_sweep = (sweep_ms * 60).div_ceil(1000) as u32;
    let took = shown.seq.wrapping_sub(seq_at_write);
    eprintln!("the write showed {took} frames later; sweep {sweep_ms} ms ({frames_per_sweep} frames)");
    assert!(
        took <= 2 * frames_per_sweep + 2,
        "the write showed {took} frames later; the view reports a sweep of {sweep_ms} ms"
    );
}
