//! `qemu-bridge view`: a local web page showing every VM of a run directory as a brick with its
//! live Hilbert map of guest RAM (see `ram::picture`).
//!
//! One thread per VM keeps a `LiveMap` and takes 60 frames a second, every VM alike. Each
//! frame re-checks the next share of the VM's pages, for as long as the scan budget allows (a
//! share of one core, split among the VMs: half a core by default; the VMs share the budget,
//! not the frames), so that a frame costs the same whatever the size of the VM: on hosts with soft-dirty bits, the pages QEMU
//! wrote (the watcher opens each VM's source, see `ram::soft_dirty`); elsewhere the
//! next pages in turn against their fingerprints. Each VM's summary says which way
//! (`tracking`) and within how long a write is seen (`sweep_ms`). Browsers connect over
//! WebSocket and get each VM's classes once, then only the pages that changed. The run directory's watcher (the mount's too) finds VMs as they appear,
//! replaces a VM restarted under the same name or whose memory was hot-plugged, and drops a VM
//! whose QEMU is gone; a scanner thread follows it, starting and ending the VMs' threads.
//!
//! Wire format, server to browser: text messages are JSON `{"type": "vms", "vms": [...]}` (the
//! set of VMs, their status, size and layout), sent whenever it changes; binary messages are
//! frames: `[1, id: u32, seq: u32, class per page: u8...]` (whole) or `[2, id: u32, seq: u32,
//! count: u32, (page: u32, class: u8) * count]` (changes), little-endian.
//!
//! The page is served only to the address it was asked for (`--listen`, loopback by default),
//! and WebSocket connections from pages of other origins are refused (a web site open in the
//! same browser cannot read the VMs through it).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::name::VmName;
use crate::ram::picture::{hilbert_side, LiveMap, PageClass};
use crate::ram::{Region, TrackingMethod};
use crate::run_dir::RunDir;
use crate::watcher::{WatchedVm, Watcher};

/// The page, with its script: no build step, no framework.
const PAGE_HTML: &str = include_str!("page.html");
/// Frames per second of each VM (the specification asks 60 for the picture).
pub const FRAMES_PER_SECOND: f64 = 60.0;
/// Frames of changes kept for browsers that fall behind; further behind, they get a whole frame.
const HISTORY: usize = 120;
/// How often the run directory is looked at for new VMs, and a VM's status asked.
const SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// Share of one core spent looking for changed pages, by default, over all VMs.
pub const DEFAULT_SCAN_BUDGET: f64 = 0.5;

/// Errors of the view server.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The address cannot be listened on.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why (the web server's error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What a browser is told of one VM.
#[derive(Debug, Clone, Serialize)]
struct VmSummary {
    id: u32,
    name: String,
    status: String,
    ram_size: u64,
    pages: usize,
    side: u32,
    regions: Vec<Region>,
    /// How changed pages are found.
    tracking: TrackingMethod,
    /// How long the last sweep over all pages took: no page of the picture is older.
    sweep_ms: Option<u64>,
}

/// A frame's number and its changes: (page, class number).
type Frame = (u32, Vec<(u32, u8)>);

/// One VM's picture and its recent changes.
#[derive(Debug)]
struct VmPicture {
    summary: VmSummary,
    classes: Vec<u8>,
    seq: u32,
    history: VecDeque<Frame>,
}

/// A VM the view shows: the watcher's number of the instance, and its picture.
#[derive(Debug)]
struct Shown {
    number: u64,
    picture: Arc<Mutex<VmPicture>>,
}

/// Every VM shown, and a version that changes whenever the set or a status changes.
#[derive(Debug, Default)]
struct Scene {
    vms: BTreeMap<VmName, Shown>,
    version: u64,
    /// Instances whose thread is taking their first picture.
    starting: HashSet<u64>,
    /// Instances whose thread ended on an error (their RAM shrank): not started again.
    ended: HashSet<u64>,
}

/// The view keeps nothing beside a VM's RAM in the watcher: its picture lives in its thread.
type ViewedVm = WatchedVm<()>;

/// The view server: bound, serving until the process ends.
pub struct ViewServer {
    server: Arc<tiny_http::Server>,
    scene: Arc<RwLock<Scene>>,
    run_dir: RunDir,
    scan_budget: f64,
    soft_dirty: bool,
}

impl ViewServer {
    /// Listens on `address` for the page of `run_dir`'s VMs.
    ///
    /// # Errors
    ///
    /// [`ViewError::Listen`] when the address cannot be bound.
    pub fn bind(address: SocketAddr, run_dir: RunDir) -> Result<Self, ViewError> {
        let server =
            tiny_http::Server::http(address).map_err(|source| ViewError::Listen { address, source })?;
        Ok(Self {
            server: Arc::new(server),
            scene: Arc::default(),
            run_dir,
            scan_budget: DEFAULT_SCAN_BUDGET,
            soft_dirty: true,
        })
    }

    /// Spends at most `cores` of one core (0.5: half a core) looking for changed pages, over
    /// all VMs; the default is [`DEFAULT_SCAN_BUDGET`]. A bigger budget re-checks every page
    /// sooner. Values are clamped to 0.01..=64.
    pub fn with_scan_budget(mut self, cores: f64) -> Self {
        self.scan_budget = if cores.is_finite() { cores.clamp(0.01, 64.0) } else { DEFAULT_SCAN_BUDGET };
        self
    }

    /// Whether pictures follow the host's soft-dirty bits where it has them (the default), or
    /// fingerprints alone.
    pub fn with_soft_dirty(mut self, use_it: bool) -> Self {
        self.soft_dirty = use_it;
        self
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn address(&self) -> Option<SocketAddr> {
        self.server.server_addr().to_ip()
    }

    /// Serves until the process ends: finds VMs, takes frames, answers browsers.
    pub fn serve(self) {
        let scene = Arc::clone(&self.scene);
        let watcher = Arc::new(Watcher::new(self.run_dir.clone(), |_, _, _| Ok(())));
        watcher.spawn_janitor();
        // each VM's thread takes its share of the frames, and each frame its share of the time
        let tracking = Tracking {
            scan_per_frame: Duration::from_secs_f64(self.scan_budget / FRAMES_PER_SECOND),
            soft_dirty: self.soft_dirty,
        };
        let scanner = std::thread::Builder::new().name("scan".into()).spawn(move || loop {
            follow(&scene, &watcher, tracking);
            std::thread::sleep(SCAN_INTERVAL);
        });
        if let Err(err) = scanner {
            log::error!("cannot start the scanner thread: {err}");
            return;
        }
        for request in self.server.incoming_requests() {
            let scene = Arc::clone(&self.scene);
            let spawned =
                std::thread::Builder::new().name("http".into()).spawn(move || answer(request, &scene));
            if let Err(err) = spawned {
                log::error!("cannot start a request thread: {err}");
            }
        }
    }
}

/// Follows the watcher: pictures of instances it dropped leave the scene (their threads end),
/// new instances get a thread of their own.
/// How each VM's thread finds changed pages.
#[derive(Debug, Clone, Copy)]
struct Tracking {
    /// Time each frame may spend.
    scan_per_frame: Duration,
    /// Whether soft-dirty bits are followed where the host has them.
    soft_dirty: bool,
}

fn follow(scene: &Arc<RwLock<Scene>>, watcher: &Arc<Watcher<()>>, tracking: Tracking) {
    let live = watcher.list();
    let numbers: HashSet<u64> = live.iter().map(|vm| vm.number).collect();
    let mut state = scene.write().unwrap_or_else(|e| e.into_inner());
    let shown = state.vms.len();
    state.vms.retain(|_, shown| numbers.contains(&shown.number));
    if state.vms.len() != shown {
        state.version += 1;
    }
    state.ended.retain(|number| numbers.contains(number));
    for vm in live {
        let known = state.vms.values().any(|shown| shown.number == vm.number)
            || state.ended.contains(&vm.number)
            || !state.starting.insert(vm.number);
        if known {
            continue;
        }
        let (scene, number) = (Arc::clone(scene), vm.number);
        let spawned = std::thread::Builder::new().name("vm".into()).spawn(move || {
            let shown = show(&scene, &vm, tracking);
            scene.write().unwrap_or_else(|e| e.into_inner()).starting.remove(&vm.number);
            match shown {
                Ok((picture, live)) => watch(&scene, &vm, &picture, live, tracking.scan_per_frame),
                Err(err) => {
                    log::warn!("view: cannot picture VM {}: {}", vm.vm.name(), crate::error::chain(&err));
                    scene.write().unwrap_or_else(|e| e.into_inner()).ended.insert(vm.number);
                }
            }
        });
        if let Err(err) = spawned {
            log::error!("cannot start a VM thread: {err}");
            state.starting.remove(&number);
        }
    }
}

/// Takes the first picture of a VM and shows it (in place of an older instance of its name).
fn show(
    scene: &RwLock<Scene>,
    vm: &ViewedVm,
    tracking: Tracking,
) -> Result<(Arc<Mutex<VmPicture>>, LiveMap), crate::ram::BridgeError> {
    let soft_dirty = if tracking.soft_dirty { vm.soft_dirty() } else { None };
    let live = LiveMap::new(vm.bridge.mapping(), soft_dirty)?;
    let summary = VmSummary {
        id: vm.number as u32,
        name: vm.info.name.to_string(),
        status: vm.info.status.to_string(),
        ram_size: vm.bridge.size() as u64,
        pages: live.classes().len(),
        side: hilbert_side(live.classes().len()),
        regions: vm.bridge.layout().regions().to_vec(),
        tracking: live.tracker().method(),
        sweep_ms: live.tracker().last_sweep().map(|sweep| sweep.as_millis() as u64),
    };
    let classes = live.classes().iter().map(|class| *class as u8).collect();
    let picture = Arc::new(Mutex::new(VmPicture { summary, classes, seq: 0, history: VecDeque::new() }));
    let mut state = scene.write().unwrap_or_else(|e| e.into_inner());
    state.vms.insert(vm.info.name.clone(), Shown { number: vm.number, picture: Arc::clone(&picture) });
    state.version += 1;
    log::info!("view: showing VM {}", vm.info.name);
    Ok((picture, live))
}

/// Whether `vm` is still the instance the scene shows under its name.
fn still_shown(scene: &RwLock<Scene>, vm: &ViewedVm) -> bool {
    scene
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .vms
        .get(vm.vm.name())
        .is_some_and(|shown| shown.number == vm.number)
}

/// Takes frames of one VM until the watcher drops it (or a newer instance replaces it), or its
/// RAM cannot be read any more.
fn watch(
    scene: &RwLock<Scene>,
    vm: &ViewedVm,
    picture: &Mutex<VmPicture>,
    mut live: LiveMap,
    scan_per_frame: Duration,
) {
    let mut next_status = Instant::now() + SCAN_INTERVAL;
    let mut next_frame = Instant::now();
    while still_shown(scene, vm) {
        let shown = scene.read().unwrap_or_else(|e| e.into_inner()).vms.len().max(1);
        // every VM at the full frame rate; the scan budget, not the frames, is what VMs share
        next_frame += Duration::from_secs_f64(1.0 / FRAMES_PER_SECOND);
        let now = Instant::now();
        if next_frame > now {
            std::thread::sleep(next_frame - now);
        } else {
            next_frame = now; // late: no catching up in a burst
        }
        let delta = match live.update(vm.bridge.mapping(), Instant::now() + scan_per_frame / shown as u32) {
            Ok(delta) => delta,
            Err(err) => {
                log::info!("view: VM {}: {}", vm.vm.name(), crate::error::chain(&err));
                let mut state = scene.write().unwrap_or_else(|e| e.into_inner());
                state.ended.insert(vm.number);
                if state.vms.get(vm.vm.name()).is_some_and(|shown| shown.number == vm.number) {
                    state.vms.remove(vm.vm.name());
                    state.version += 1;
                }
                return;
            }
        };
        {
            let mut picture = picture.lock().unwrap_or_else(|e| e.into_inner());
            for &(page, class) in &delta {
                picture.classes[page as usize] = class as u8;
            }
            picture.seq = picture.seq.wrapping_add(1);
            let seq = picture.seq;
            picture
                .history
                .push_back((seq, delta.iter().map(|&(page, class)| (page, class as u8)).collect()));
            if picture.history.len() > HISTORY {
                picture.history.pop_front();
            }
        }
        if Instant::now() >= next_status {
            next_status = Instant::now() + SCAN_INTERVAL;
            let sweep_ms = live.tracker().last_sweep().map(|sweep| sweep.as_millis() as u64);
            // a QEMU that is busy keeps its last status; one that quit is dropped by the watcher
            let status = vm.with_qmp(|qmp| qmp.query_status()).ok().map(|status| status.status.to_string());
            let mut picture = picture.lock().unwrap_or_else(|e| e.into_inner());
            // freshness is told again when it moved by a fifth or more
            let fresher = |old: Option<u64>, new: Option<u64>| match (old, new) {
                (Some(old), Some(new)) => old.abs_diff(new) * 5 > old.max(new),
                (old, new) => old != new,
            };
            let status = status.unwrap_or_else(|| picture.summary.status.clone());
            // a soft-dirty tracker whose bits failed goes on by fingerprints: say so
            let tracking = live.tracker().method();
            if picture.summary.status != status
                || picture.summary.tracking != tracking
                || fresher(picture.summary.sweep_ms, sweep_ms)
            {
                picture.summary.status = status;
                picture.summary.tracking = tracking;
                picture.summary.sweep_ms = sweep_ms;
                drop(picture);
                scene.write().unwrap_or_else(|e| e.into_inner()).version += 1;
            }
        }
    }
}

/// Answers one HTTP request: the page, the WebSocket of frames, or 404.
fn answer(request: tiny_http::Request, scene: &RwLock<Scene>) {
    let header = |name: &str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_string())
    };
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let respond = |request: tiny_http::Request, response: tiny_http::Response<std::io::Cursor<Vec<u8>>>| {
        if let Err(err) = request.respond(response) {
            log::debug!("view: reply failed: {err}");
        }
    };
    match path.as_str() {
        "/" | "/index.html" => {
            let content_type = tiny_http::Header::from_bytes("Content-Type", "text/html; charset=utf-8");
            let mut response = tiny_http::Response::from_string(PAGE_HTML);
            if let Ok(content_type) = content_type {
                response.add_header(content_type);
            }
            respond(request, response);
        }
        "/ws" => {
            let (Some(key), Some(host)) = (header("Sec-WebSocket-Key"), header("Host")) else {
                return respond(
                    request,
                    tiny_http::Response::from_string("a WebSocket, please").with_status_code(400),
                );
            };
            // a page of another origin may open WebSockets here too: only our own page may
            if header("Origin").is_some_and(|origin| origin != format!("http://{host}")) {
                return respond(
                    request,
                    tiny_http::Response::from_string("other origin").with_status_code(403),
                );
            }
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut response = tiny_http::Response::empty(101);
            if let Ok(accept) = tiny_http::Header::from_bytes("Sec-WebSocket-Accept", accept) {
                response.add_header(accept);
            }
            let stream = request.upgrade("websocket", response);
            let socket =
                tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Server, None);
            stream_frames(socket, scene);
        }
        _ => respond(request, tiny_http::Response::from_string("not found").with_status_code(404)),
    }
}

/// Sends a browser the set of VMs whenever it changes, and every VM's frames: whole the first
/// time (or after falling too far behind), then only the changed pages.
fn stream_frames<S: std::io::Read + std::io::Write>(
    mut socket: tungstenite::WebSocket<S>,
    scene: &RwLock<Scene>,
) {
    let mut version = u64::MAX;
    let mut sent: HashMap<u32, u32> = HashMap::new();
    loop {
        let pictures: Vec<Arc<Mutex<VmPicture>>> = {
            let state = scene.read().unwrap_or_else(|e| e.into_inner());
            if state.version != version {
                version = state.version;
                let vms: Vec<VmSummary> = state
                    .vms
                    .values()
                    .map(|shown| shown.picture.lock().unwrap_or_else(|e| e.into_inner()).summary.clone())
                    .collect();
                sent.retain(|id, _| vms.iter().any(|vm| vm.id == *id));
                let json = serde_json::json!({ "type": "vms", "legend": legend(), "vms": vms }).to_string();
                if socket.send(tungstenite::Message::text(json)).is_err() {
                    return;
                }
            }
            state.vms.values().map(|shown| Arc::clone(&shown.picture)).collect()
        };
        for picture in pictures {
            let message = {
                let picture = picture.lock().unwrap_or_else(|e| e.into_inner());
                frame_message(&picture, sent.get(&picture.summary.id).copied())
            };
            if let Some((id, seq, bytes)) = message {
                sent.insert(id, seq);
                if socket.write(tungstenite::Message::binary(bytes)).is_err() {
                    return;
                }
            }
        }
        if socket.flush().is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(4));
    }
}

/// The message that brings a browser that has frame `sent` of a VM (none: nothing yet) up to
/// date, if it is behind: `(id, seq, bytes)`.
fn frame_message(picture: &VmPicture, sent: Option<u32>) -> Option<(u32, u32, Vec<u8>)> {
    let (id, seq) = (picture.summary.id, picture.seq);
    if sent == Some(seq) {
        return None;
    }
    let header = |kind: u8| {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
        bytes
    };
    let missed: Option<Vec<&Frame>> = sent.and_then(|sent| {
        let missed: Vec<_> =
            picture.history.iter().filter(|(frame, _)| frame.wrapping_sub(sent) as i32 > 0).collect();
        // all of them still in the history, or a whole frame is needed
        (missed.first().is_some_and(|(first, _)| *first == sent.wrapping_add(1))).then_some(missed)
    });
    let Some(missed) = missed else {
        let mut bytes = header(1);
        bytes.extend_from_slice(&picture.classes);
        return Some((id, seq, bytes));
    };
    // the latest class of every page that changed in the frames missed
    let mut changes: BTreeMap<u32, u8> = BTreeMap::new();
    for (_, delta) in missed {
        changes.extend(delta.iter().copied());
    }
    let mut bytes = header(2);
    bytes.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    for (page, class) in changes {
        bytes.extend_from_slice(&page.to_le_bytes());
        bytes.push(class);
    }
    Some((id, seq, bytes))
}

/// The legend of the page classes, as the page shows it (JSON: number, colour, words).
pub fn legend() -> serde_json::Value {
    PageClass::ALL
        .iter()
        .map(|class| {
            let [r, g, b] = class.color();
            serde_json::json!({
                "class": class,
                "number": *class as u8,
                "color": format!("#{r:02x}{g:02x}{b:02x}"),
                "description": class.description(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(seq: u32, history: &[(u32, &[(u32, u8)])]) -> VmPicture {
        VmPicture {
            summary: VmSummary {
                id: 7,
                name: "vm".into(),
                status: "running".into(),
                ram_size: 4 * 4096,
                pages: 4,
                side: 2,
                regions: Vec::new(),
                tracking: TrackingMethod::Fingerprints,
                sweep_ms: Some(16),
            },
            classes: vec![0, 1, 2, 4],
            seq,
            history: history.iter().map(|(seq, delta)| (*seq, delta.to_vec())).collect(),
        }
    }

    #[test]
    fn browsers_get_a_whole_frame_first_then_changes_merged() {
        let current = picture(12, &[(10, &[(1, 3)]), (11, &[(2, 3), (1, 4)]), (12, &[])]);
        let (_, seq, whole) = frame_message(&current, None).unwrap();
        assert_eq!(seq, 12);
        assert_eq!(whole, [1, 7, 0, 0, 0, 12, 0, 0, 0, 0, 1, 2, 4]);
        assert!(frame_message(&current, Some(12)).is_none(), "up to date");
        let (_, _, delta) = frame_message(&current, Some(9)).unwrap();
        // pages 1 and 2, page 1 with its latest class
        assert_eq!(delta, [2, 7, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4, 2, 0, 0, 0, 3]);
        let (_, _, empty) = frame_message(&current, Some(11)).unwrap();
        assert_eq!(empty, [2, 7, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0], "a frame with no change is sent");
        let (_, _, behind) = frame_message(&current, Some(5)).unwrap();
        assert_eq!(behind[0], 1, "too far behind: a whole frame");
    }

    #[test]
    fn the_legend_names_every_class_once() {
        let legend = legend();
        assert_eq!(legend.as_array().unwrap().len(), PageClass::ALL.len());
        assert_eq!(legend[4]["class"], "random");
        assert_eq!(legend[0]["color"], "#101216");
    }
}
