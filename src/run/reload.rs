//! The pipeline file re-read while the service runs: on SIGHUP, or when the
//! file changes on disk. A file `pipeline check` would refuse is refused the
//! same way (logged with the reason) and the table in force stays. An
//! accepted one takes effect from the next change; state is kept for every
//! property, so a newly allowed hotel gets correct events at once.
//!
//! Owns noticing a change and describing it; the swap itself is the service
//! loop's, between two batches.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::pipeline::{Allowlist, Pipeline};

/// How often the file's modification time is looked at.
const POLL: Duration = Duration::from_secs(1);

/// Watches the pipeline file the service loaded, if it loaded one.
pub struct PipelineWatch {
    /// `None`: the built-in pipeline is in force; nothing to re-read.
    path: Option<PathBuf>,
    /// What the file was when last read.
    modified: Option<Fingerprint>,
    last_poll: Instant,
}

/// What tells one version of the file from the next: the file the path
/// resolves to and its modification time. An edit in place changes the
/// time; a Kubernetes ConfigMap update swaps the `..data` symlink to a new
/// `..2026_…` directory, which changes the file the path resolves to
/// (whatever the new file's time says). A file replaced with its old time
/// kept is seen on SIGHUP only, as before.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    resolved: PathBuf,
    modified: SystemTime,
}

fn modified(path: &Path) -> Option<Fingerprint> {
    let resolved = std::fs::canonicalize(path).ok()?;
    let modified = std::fs::metadata(&resolved).and_then(|m| m.modified()).ok()?;
    Some(Fingerprint { resolved, modified })
}

impl PipelineWatch {
    pub fn new(path: Option<PathBuf>) -> PipelineWatch {
        let modified = path.as_deref().and_then(modified);
        PipelineWatch { path, modified, last_poll: Instant::now() }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether the file changed on disk since it was last read (looked at
    /// once a second at most).
    pub fn changed_on_disk(&mut self) -> bool {
        if self.last_poll.elapsed() < POLL {
            return false;
        }
        self.last_poll = Instant::now();
        let Some(path) = &self.path else { return false };
        let now = modified(path);
        now.is_some() && now != self.modified
    }

    /// Reads the file again. `Ok(None)`: no file to read (built-in pipeline).
    pub fn read(&mut self) -> Result<Option<Pipeline>, crate::pipeline::PipelineError> {
        let Some(path) = &self.path else { return Ok(None) };
        self.modified = modified(path);
        Pipeline::load(path).map(Some)
    }
}

/// What differs between the pipeline in force and a new one, one line per
/// difference, for the log. Empty: nothing that matters changed.
pub fn differences(old: &Pipeline, new: &Pipeline) -> Vec<String> {
    let mut out = Vec::new();
    match (&old.allowlist, &new.allowlist) {
        (Allowlist::Only(a), Allowlist::Only(b)) => {
            let added: Vec<&String> = b.iter().filter(|p| !a.contains(p)).collect();
            let removed: Vec<&String> = a.iter().filter(|p| !b.contains(p)).collect();
            if !added.is_empty() {
                out.push(format!("allowlist: added {added:?}"));
            }
            if !removed.is_empty() {
                out.push(format!("allowlist: removed {removed:?}"));
            }
        }
        (a, b) if a != b => out.push(format!("allowlist: {} → {}", show(a), show(b))),
        _ => {}
    }
    if old.paths != new.paths {
        out.push(format!("field mapping: {:?} → {:?}", old.paths, new.paths));
    }
    if old.statuses != new.statuses {
        let mut o: Vec<_> = old.statuses.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        let mut n: Vec<_> = new.statuses.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        o.sort();
        n.sort();
        out.push(format!("statuses: [{}] → [{}]", o.join(", "), n.join(", ")));
    }
    if old.rules != new.rules {
        let changed = new.rules.iter().filter(|r| !old.rules.contains(r)).count() + old.rules.iter().filter(|r| !new.rules.contains(r)).count();
        out.push(format!("table: {} rows → {} rows, {changed} rows differ", old.rules.len(), new.rules.len()));
    }
    if old.timers != new.timers {
        let rows = |p: &Pipeline| p.timers.iter().map(|t| format!("{} while {} at {} {}", t.event.name(), t.state.name(), t.field.name(), crate::time::format_duration(t.after_ms))).collect::<Vec<_>>();
        out.push(format!("timers: {:?} → {:?}", rows(old), rows(new)));
    }
    if old.retention_ms != new.retention_ms {
        let show = |r: Option<i64>| r.map_or_else(|| "none".to_string(), crate::time::format_duration);
        out.push(format!("retention: {} → {}", show(old.retention_ms), show(new.retention_ms)));
    }
    if old.routes != new.routes {
        out.push(format!("routes: {:?} → {:?}", old.routes.iter().map(|r| &r.topic).collect::<Vec<_>>(), new.routes.iter().map(|r| &r.topic).collect::<Vec<_>>()));
    }
    out
}

fn show(a: &Allowlist) -> String {
    match a {
        Allowlist::Every => "every property".into(),
        Allowlist::Only(l) => format!("{l:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_what_changed() {
        let old = Pipeline::builtin();
        assert!(differences(&old, &old.clone()).is_empty());
        let mut new = old.clone();
        new.allowlist = Allowlist::Only(vec!["P-OSL-01".into()]);
        assert_eq!(differences(&old, &new), vec!["allowlist: every property → [\"P-OSL-01\"]".to_string()]);
        let mut newer = new.clone();
        newer.allowlist = Allowlist::Only(vec!["P-BGO-02".into()]);
        assert_eq!(differences(&new, &newer), vec!["allowlist: added [\"P-BGO-02\"]".to_string(), "allowlist: removed [\"P-OSL-01\"]".to_string()]);
    }

    #[test]
    fn a_file_is_read_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, crate::pipeline::DEFAULT_PIPELINE).unwrap();
        let mut w = PipelineWatch::new(Some(path.clone()));
        w.last_poll -= POLL;
        assert!(!w.changed_on_disk());
        std::fs::write(&path, "not a pipeline").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
        w.last_poll -= POLL;
        assert!(w.changed_on_disk());
        assert!(w.read().is_err(), "a broken file is refused");
        w.last_poll -= POLL;
        assert!(!w.changed_on_disk(), "and not read again until it changes");
        assert!(PipelineWatch::new(None).read().unwrap().is_none());
    }

    /// What kubelet does to a mounted ConfigMap: the new version goes into a
    /// new `..<timestamp>` directory, then the `..data` symlink is swapped to
    /// it by a rename; the file itself is a symlink through `..data`.
    #[test]
    fn a_configmap_update_is_seen_even_when_the_new_file_has_the_old_ones_time() {
        let dir = tempfile::tempdir().unwrap();
        let version = |name: &str, text: &str, time: SystemTime| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("pipeline.toml"), text).unwrap();
            std::fs::File::options().write(true).open(d.join("pipeline.toml")).unwrap().set_modified(time).unwrap();
        };
        let time = SystemTime::now() - Duration::from_secs(60);
        version("..2026_12_08_00_00_00.1", crate::pipeline::DEFAULT_PIPELINE, time);
        std::os::unix::fs::symlink("..2026_12_08_00_00_00.1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pipeline.toml", dir.path().join("pipeline.toml")).unwrap();
        let mut w = PipelineWatch::new(Some(dir.path().join("pipeline.toml")));
        w.last_poll -= POLL;
        assert!(!w.changed_on_disk());

        let allow_one = crate::pipeline::DEFAULT_PIPELINE.replace("properties = \"*\"", "properties = [\"P-OSL-01\"]");
        version("..2026_12_08_00_05_00.2", &allow_one, time);
        std::os::unix::fs::symlink("..2026_12_08_00_05_00.2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        w.last_poll -= POLL;
        assert!(w.changed_on_disk(), "the swap is a change");
        let new = w.read().unwrap().unwrap();
        assert_eq!(new.allowlist, Allowlist::Only(vec!["P-OSL-01".into()]));
        w.last_poll -= POLL;
        assert!(!w.changed_on_disk(), "read once");
    }
}
