//! The saver's writes, through one seam: [`Disk`]. With [`DiskFaults`] a
//! test makes them fail as a full or failing disk would (`ENOSPC`, `EIO`),
//! without a small filesystem, which not every machine can mount.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// A switch that makes every write and sync of a data directory fail, for
/// tests (`Config::disk_faults`). Clones share the switch.
#[derive(Clone, Debug, Default)]
pub struct DiskFaults(Arc<AtomicI32>);

impl DiskFaults {
    /// From now on every write and sync fails with the OS error `errno`
    /// (28: no space left on device; 5: an I/O error); an append first
    /// writes half of its bytes, as a disk that fills up mid-write does.
    pub fn fail(&self, errno: i32) {
        self.0.store(errno, Ordering::SeqCst);
    }

    /// Writes work again.
    pub fn heal(&self) {
        self.0.store(0, Ordering::SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        match self.0.load(Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The file operations the saver makes: the real ones, unless a test's
/// [`DiskFaults`] says they fail.
#[derive(Clone, Debug, Default)]
pub(super) struct Disk {
    pub(super) faults: Option<DiskFaults>,
}

impl Disk {
    fn check(&self) -> io::Result<()> {
        self.faults.as_ref().map_or(Ok(()), DiskFaults::check)
    }

    /// Creates `path`, which must not exist.
    pub(super) fn create_new(&self, path: &Path) -> io::Result<File> {
        self.check()?;
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    /// Creates or empties `path`.
    pub(super) fn create(&self, path: &Path) -> io::Result<File> {
        self.check()?;
        File::create(path)
    }

    /// Writes all of `bytes` at the file's position.
    pub(super) fn append(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.check() {
            // Part of it makes it, as on a disk that fills up meanwhile.
            file.write_all(&bytes[..bytes.len() / 2])?;
            return Err(e);
        }
        file.write_all(bytes)
    }

    /// Syncs the file's data (and its length).
    pub(super) fn sync(&self, file: &File) -> io::Result<()> {
        self.check()?;
        file.sync_data()
    }

    /// Cuts the file back to `len` bytes, synced, and writes on from there.
    pub(super) fn cut(&self, file: &mut File, len: u64) -> io::Result<()> {
        self.check()?;
        file.set_len(len)?;
        file.seek(SeekFrom::Start(len))?;
        file.sync_data()
    }

    /// Renames `from` to `to`.
    pub(super) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check()?;
        fs::rename(from, to)
    }

    /// Syncs a directory, so that a file created, renamed or removed in it
    /// stays so after a crash.
    pub(super) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check()?;
        File::open(dir)?.sync_all()
    }
}
