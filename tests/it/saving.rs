//! `--data-dir` when saving fails (API.md Part 4): once a change answered
//! 2xx has waited more than a second for the disk, `/healthz` answers 503
//! `{"status": "data dir not saving"}` and changes answer 503 with a JSON
//! error until a save succeeds again; reads and heartbeats that change no
//! status go on, and nothing answered 2xx is lost. In process through the
//! saver's seam (`DiskFaults`: ENOSPC, EIO), and end to end on a real full
//! tmpfs where this machine can mount one.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use registro::DiskFaults;

use crate::restart::{ok, register, Dir};
use crate::support::{eventually, raw, start_with, Conn, Proc, Reply};

const LONG: Duration = Duration::from_secs(10);
const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn healthz(addr: SocketAddr) -> Reply {
    raw(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// The value of a metric without labels.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let body = raw(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// The ids of app `web`'s instances with their status.
fn statuses(addr: SocketAddr) -> Vec<(String, String)> {
    let mut got: Vec<(String, String)> = ok(Conn::open(addr).get("/apps/web"), 200).json()
        ["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            let field = |k: &str| i[k].as_str().unwrap_or_default().to_string();
            (field("id"), field("status"))
        })
        .collect();
    got.sort();
    got
}

#[track_caller]
fn not_saving(r: Reply) {
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.error().contains("not saving"), "{r:?}");
}

/// A copy of a data directory as it is on disk now: what a crash at this
/// moment would leave.
fn crashed_copy(from: &Path) -> Dir {
    let to = Dir::new();
    fs::create_dir_all(&to.0).expect("create");
    for entry in fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.0.join(entry.file_name())).expect("copy");
    }
    to
}

fn through_the_seam(errno: i32) {
    let dir = Dir::new();
    let faults = DiskFaults::default();
    let server = start_with(|c| {
        c.data_dir = Some(dir.0.clone());
        c.disk_faults = Some(faults.clone());
    });
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    ok(c.post("/apps", r#"{"name":"web"}"#), 201);
    ok(register(&mut c, "web", "up", ""), 201);
    ok(c.put("/apps/web/up"), 204);
    ok(register(&mut c, "web", "starting", ""), 201);
    assert_eq!(healthz(addr).status, 200);

    faults.fail(errno);
    // Answered before the disk is asked; it waits for the disk.
    ok(register(&mut c, "web", "during", ""), 201);
    let r = eventually(LONG, "/healthz to say so", || {
        Some(healthz(addr)).filter(|r| r.status == 503)
    });
    assert_eq!(
        r.json(),
        serde_json::json!({"status": "data dir not saving"})
    );
    assert_eq!(metric(addr, "registro_data_dir_saving"), 0.0);
    assert!(metric(addr, "registro_data_dir_unsaved_seconds") > 1.0);
    assert!(metric(addr, "registro_data_dir_save_failures_total") >= 1.0);
    // Changes are refused...
    not_saving(register(&mut c, "web", "refused", ""));
    not_saving(c.post("/apps", r#"{"name":"other"}"#));
    not_saving(c.delete("/apps/web/up"));
    not_saving(c.put("/apps/web/starting")); // starting to up
                                             // ...reads and plain heartbeats are not.
    ok(c.put("/apps/web/up"), 204);
    let names: Vec<String> = statuses(addr).into_iter().map(|(id, _)| id).collect();
    assert_eq!(names, ["during", "starting", "up"]);

    faults.heal();
    eventually(LONG, "/healthz to recover", || {
        (healthz(addr).status == 200).then_some(())
    });
    assert_eq!(metric(addr, "registro_data_dir_saving"), 1.0);
    ok(register(&mut c, "web", "after", ""), 201);
    ok(c.put("/apps/web/starting"), 204);
    eventually(LONG, "every change on disk", || {
        (metric(addr, "registro_data_dir_unsaved_seconds") == 0.0).then_some(())
    });
    // A crash now loses nothing: the log the failed writes left torn was
    // cut back and written again (a start refuses a damaged log).
    let copy = crashed_copy(&dir.0);
    let want = vec![
        ("after".to_string(), "starting".to_string()),
        ("during".to_string(), "starting".to_string()),
        ("starting".to_string(), "up".to_string()),
        ("up".to_string(), "up".to_string()),
    ];
    let again = start_with(|c| c.data_dir = Some(copy.0.clone()));
    assert_eq!(statuses(again.local_addr()), want);
    again.shutdown();
    // So does a clean stop.
    drop(c);
    server.shutdown();
    let again = start_with(|c| c.data_dir = Some(dir.0.clone()));
    assert_eq!(statuses(again.local_addr()), want);
}

#[test]
fn a_full_disk_refuses_changes_until_it_saves_again_and_loses_nothing() {
    through_the_seam(ENOSPC);
}

#[test]
fn an_io_error_refuses_changes_until_it_saves_again_and_loses_nothing() {
    through_the_seam(EIO);
}

/// A tmpfs of `size` mounted for one test, unmounted on drop; `None`
/// where this machine does not let the test mount one (not root, no
/// CAP_SYS_ADMIN in a container).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "registro-tmpfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .is_ok_and(|out| out.status.success());
        if !mounted {
            let _ = fs::remove_dir(&path);
            return None;
        }
        Some(Tmpfs(path))
    }

    /// Writes to a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = fs::File::create(&path).expect("create the filler");
        let block = vec![0x55; 4096];
        while f.write_all(&block).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// End to end: the data directory on a real 1 MiB tmpfs, filled up.
#[test]
fn a_real_full_disk_refuses_changes_says_so_and_recovers_when_it_has_room() {
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        println!(
            "SKIP a_real_full_disk_refuses_changes_says_so_and_recovers_when_it_has_room: \
             cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)"
        );
        return;
    };
    let data = tmpfs.0.join("data");
    let data_arg = data.to_str().expect("UTF-8");
    let mut p = Proc::start(&["--data-dir", data_arg]);
    let mut c = Conn::open(p.addr);
    ok(c.post("/apps", r#"{"name":"web"}"#), 201);
    let mut acked = Vec::new();
    for n in 0..5 {
        let id = format!("before-{n}");
        ok(register(&mut c, "web", &id, ""), 201);
        acked.push(id);
    }
    let filler = tmpfs.fill();
    // Registrations go on being answered 201 until one has waited a
    // second for the disk; then 503.
    let mut n = 0;
    let refused = eventually(LONG, "a registration refused", || {
        n += 1;
        let id = format!("full-{n}");
        let r = register(&mut c, "web", &id, "");
        match r.status {
            201 => {
                acked.push(id);
                None
            }
            _ => Some(r),
        }
    });
    not_saving(refused);
    p.wait_line("not saving: a change answered", LONG);
    assert_eq!(healthz(p.addr).status, 503);
    ok(c.get("/apps/web"), 200);

    fs::remove_file(filler).expect("make room");
    p.wait_line("saving again after", LONG);
    assert_eq!(healthz(p.addr).status, 200);
    ok(register(&mut c, "web", "after", ""), 201);
    acked.push("after".to_string());
    eventually(LONG, "every change on disk", || {
        (metric(p.addr, "registro_data_dir_unsaved_seconds") == 0.0).then_some(())
    });
    drop(c);
    p.child.kill().expect("SIGKILL");
    let _ = p.child.wait();

    let p = Proc::start(&["--data-dir", data_arg]);
    let got: Vec<String> = statuses(p.addr).into_iter().map(|(id, _)| id).collect();
    acked.sort();
    assert_eq!(got, acked);
    drop(p);
    drop(tmpfs);
}
