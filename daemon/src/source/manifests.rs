//! The manifests source: Services, EndpointSlices and Nodes from multi-document YAML (or JSON) files in a
//! directory, for demos, tests and nodes without an API server.
//!
//! The first scan applies each file's objects as soon as the file is read, then sends [`Event::Synced`]: the
//! model is empty when the source starts, so nothing needs an [`Event::Replace`], and the parsed objects of
//! every file are never alive at once (at 50,000 Services × 10 endpoints they took some 300 MiB, which the
//! daemon's memory kept after they were freed). Afterwards the directory is watched (inotify, with a slow poll as a safety net): a changed file's objects are re-applied (the store
//! ignores unchanged ones) and objects that left a file, or whose file was removed, are deleted. Other kinds
//! are skipped with a log line; a document that does not parse is skipped with a log line naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::Watcher as _;
use switchyard_model::manifest::{self, Skipped};
use switchyard_model::store::{Event, Object, ObjectKey};
use tracing::{debug, info, warn};

/// How often the directory is rescanned even without an inotify event.
const POLL: Duration = Duration::from_secs(2);

/// Parses one file's documents into objects. Bad documents and other kinds are logged and skipped.
pub fn parse_file(path: &Path, text: &str) -> Vec<Object> {
    let (objects, skipped) = manifest::parse(text);
    for (document, why) in skipped {
        match why {
            Skipped::Syntax(error) => {
                warn!(file = %path.display(), document, %error, "manifest does not parse; the rest of the file is skipped")
            }
            Skipped::OtherKind { api_version, kind } => {
                info!(file = %path.display(), document, %api_version, %kind, "not a Service, EndpointSlice or Node; skipped")
            }
            Skipped::Invalid { kind, error } => {
                warn!(file = %path.display(), document, %kind, %error, "invalid object; skipped")
            }
        }
    }
    objects
}

/// What a file held when last read.
#[derive(Debug)]
struct FileState {
    stamp: (SystemTime, u64),
    keys: BTreeSet<ObjectKey>,
}

/// What the watcher reports.
enum Wake {
    /// These files changed (created, written, renamed, removed).
    Paths(Vec<PathBuf>),
    /// Something happened that names no file, or events were lost: rescan everything.
    Rescan,
}

/// Runs the source until the receiver of `tx` is dropped.
pub async fn run(dir: PathBuf, tx: super::Sender) {
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel::<Wake>(1024);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let wake = match res {
            Ok(ev) if !ev.paths.is_empty() && !ev.need_rescan() => Wake::Paths(ev.paths),
            _ => Wake::Rescan,
        };
        // A full queue means a burst: the periodic rescan catches anything dropped here.
        let _ = wake_tx.try_send(wake);
    })
    .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|()| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot watch the manifests directory; polling every {POLL:?}");
            None
        }
    };

    let mut files: BTreeMap<PathBuf, FileState> = BTreeMap::new();
    if first_scan(&dir, &mut files, &tx).await.is_err() {
        return;
    }
    loop {
        let only: Option<BTreeSet<PathBuf>>;
        tokio::select! {
            wake = wake_rx.recv() => {
                // Read only the files named, unless something asks for a full rescan.
                let mut paths = BTreeSet::new();
                let mut rescan = false;
                let mut next = wake;
                while let Some(w) = next {
                    match w {
                        Wake::Paths(p) => paths.extend(p),
                        Wake::Rescan => rescan = true,
                    }
                    next = wake_rx.try_recv().ok();
                }
                only = (!rescan).then_some(paths);
            }
            _ = tokio::time::sleep(POLL) => only = None,
            _ = tx.closed() => return,
        }
        for ev in scan(&dir, &mut files, only.as_ref()) {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// The first scan: every file's objects as [`Event::Apply`]s, file by file, then [`Event::Synced`]. Fails
/// when the receiver is gone.
async fn first_scan(dir: &Path, files: &mut BTreeMap<PathBuf, FileState>, tx: &super::Sender) -> Result<(), ()> {
    for (path, stamp) in present(dir, None) {
        let Some((objects, _)) = read(&path, stamp, files) else { continue };
        for obj in objects {
            tx.send(Event::Apply(obj)).await.map_err(drop)?;
        }
    }
    tx.send(Event::Synced).await.map_err(drop)
}

/// The manifest files in `dir` (or those of `only` in it), with their modification time and size.
fn present(dir: &Path, only: Option<&BTreeSet<PathBuf>>) -> BTreeMap<PathBuf, (SystemTime, u64)> {
    let manifest = |p: &Path| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
    let stamp = |p: &Path| {
        std::fs::metadata(p).ok().filter(|m| m.is_file()).map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut present = BTreeMap::new();
    let candidates: Vec<PathBuf> = match only {
        Some(paths) => paths.iter().filter(|p| p.parent() == Some(dir)).cloned().collect(),
        None => match std::fs::read_dir(dir) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the manifests directory");
                Vec::new()
            }
        },
    };
    for path in candidates.into_iter().filter(|p| manifest(p)) {
        if let Some(st) = stamp(&path) {
            present.insert(path, st);
        }
    }
    present
}

/// Reads one file and records what it holds. Returns its objects and the keys of those it held before and
/// no longer does; `None` if it cannot be read.
fn read(
    path: &Path,
    stamp: (SystemTime, u64),
    files: &mut BTreeMap<PathBuf, FileState>,
) -> Option<(Vec<Object>, Vec<ObjectKey>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read manifest");
            return None;
        }
    };
    let objects = parse_file(path, &text);
    let keys: BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
    debug!(file = %path.display(), objects = objects.len(), "manifest read");
    let gone = files.get(path).map(|old| old.keys.difference(&keys).cloned().collect()).unwrap_or_default();
    files.insert(path.to_path_buf(), FileState { stamp, keys });
    Some((objects, gone))
}

/// Rescans the directory (or only the files in `only`); returns the events for what changed since the
/// last scan.
fn scan(dir: &Path, files: &mut BTreeMap<PathBuf, FileState>, only: Option<&BTreeSet<PathBuf>>) -> Vec<Event> {
    let present = present(dir, only);
    // Files gone: among those looked at (all of them, or the ones named).
    let looked_at = |p: &PathBuf| only.is_none_or(|o| o.contains(p));

    let mut deletes: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut applies: Vec<Object> = Vec::new();
    // Files removed: their objects go.
    let removed: Vec<PathBuf> = files.keys().filter(|p| looked_at(p) && !present.contains_key(*p)).cloned().collect();
    for path in removed {
        let state = files.remove(&path).expect("listed above");
        info!(file = %path.display(), objects = state.keys.len(), "manifest removed");
        deletes.extend(state.keys);
    }
    for (path, stamp) in present {
        if files.get(&path).is_some_and(|f| f.stamp == stamp) {
            continue;
        }
        let Some((objects, gone)) = read(&path, stamp, files) else { continue };
        deletes.extend(gone);
        applies.extend(objects);
    }
    // An object that moved from one file to another is applied, not deleted.
    for obj in &applies {
        deletes.remove(&obj.key());
    }
    let mut events: Vec<Event> = deletes.into_iter().map(Event::Delete).collect();
    events.extend(applies.into_iter().map(Event::Apply));
    events
}

#[cfg(test)]
mod tests;
