//! One deploy of an environment at a time, across every machine that deploys it.
//!
//! Two locks, taken in this order and released together:
//! - on this machine, `deployments/.<env>.lock` under `flock`: the kernel releases it
//!   when the holder dies (kill -9 included), and its text names the holder;
//! - on every host of the fleet, a labelled marker: the Docker volume
//!   `cascade-lock-<env>`. Creating a volume whose name exists returns the existing one
//!   with its first creator's labels, so a create is a compare-and-set that any machine
//!   driving the engine respects. A marker whose holder ran on this machine and is no
//!   longer alive is stale and taken over; one held from another machine stops the
//!   deploy (exit 3) naming who holds it and since when.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::Host;
use crate::Error;

const L_HOLDER: &str = "cascade.lock.holder";
const L_MACHINE: &str = "cascade.lock.machine";
const L_PID: &str = "cascade.lock.pid";
const L_SINCE: &str = "cascade.lock.since";

/// Held for the deploy's life; dropping it releases every marker it took.
pub(crate) struct FleetLock<'a> {
    _file: File,
    volume: String,
    holder: String,
    held: Vec<&'a Host>,
}

fn machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM means it exists under another user.
    // SAFETY: kill with signal 0 sends nothing; it only asks whether `pid` exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Takes the environment's lock here, then on every host, or says who holds it.
pub(crate) fn acquire<'a>(
    project: &Path,
    env: &str,
    since: &str,
    hosts: &'a [Host],
) -> Result<FleetLock<'a>, Error> {
    let dir = crate::Layout::new(project).deployments();
    std::fs::create_dir_all(&dir).map_err(|source| Error::Read {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!(".{env}.lock"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
    let pid = std::process::id();
    let me = machine();
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        // Two short lines; bounded, as any other machine may have written it.
        let mut text = String::new();
        let _ = (&mut file).take(4096).read_to_string(&mut text);
        let mut lines = text.lines();
        return Err(Error::DeployLocked {
            env: env.to_string(),
            at: None,
            holder: lines.next().unwrap_or("another deploy").to_string(),
            since: lines.next().unwrap_or("an unknown time").to_string(),
        });
    }
    let shown = format!("pid {pid} on {me}");
    let _ = file.set_len(0);
    let _ = file.write_all(format!("{shown}\n{since}\n").as_bytes());
    let mut lock = FleetLock {
        _file: file,
        volume: format!("cascade-lock-{env}"),
        holder: format!("{me}:{pid}:{since}"),
        held: Vec::new(),
    };
    let labels = std::collections::BTreeMap::from([
        (L_HOLDER.to_string(), lock.holder.clone()),
        (L_MACHINE.to_string(), me.clone()),
        (L_PID.to_string(), pid.to_string()),
        (L_SINCE.to_string(), since.to_string()),
    ]);
    for host in hosts {
        let engine = |source| Error::DeployEngine { source };
        let mut got = host
            .docker
            .create_or_get_volume(&lock.volume, &labels)
            .map_err(engine)?;
        let stale = got.get(L_HOLDER) != Some(&lock.holder)
            && got.get(L_MACHINE) == Some(&me)
            && got
                .get(L_PID)
                .and_then(|p| p.parse::<i32>().ok())
                .is_some_and(|p| !alive(p));
        if stale {
            host.docker.remove_volume(&lock.volume).map_err(engine)?;
            got = host
                .docker
                .create_or_get_volume(&lock.volume, &labels)
                .map_err(engine)?;
        }
        if got.get(L_HOLDER) != Some(&lock.holder) {
            let holder = match (got.get(L_PID), got.get(L_MACHINE)) {
                (Some(p), Some(m)) => format!("pid {p} on {m}"),
                _ => "another deploy".to_string(),
            };
            return Err(Error::DeployLocked {
                env: env.to_string(),
                at: Some(host.name.clone()),
                holder,
                since: got
                    .get(L_SINCE)
                    .cloned()
                    .unwrap_or_else(|| "an unknown time".into()),
            });
        }
        lock.held.push(host);
    }
    Ok(lock)
}

impl Drop for FleetLock<'_> {
    fn drop(&mut self) {
        for host in self.held.iter().rev() {
            // Only our own marker: a marker someone took over after we were presumed
            // dead is theirs.
            if let Ok(Some(labels)) = host.docker.volume_labels(&self.volume) {
                if labels.get(L_HOLDER) == Some(&self.holder) {
                    let _ = host.docker.remove_volume(&self.volume);
                }
            }
        }
        // The file lock goes with the file.
    }
}
