//! Small filesystem helpers the modules share: atomic replacement of a
//! state file, whole reads of small kernel files, the names in a directory.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::IoError;

/// Writes `bytes` to `path` atomically: its directory made when missing, a
/// temporary file (`PATH.tmp`) written, then put in `path`'s place (see
/// [`replace`]). No fsync (the callers' files describe state that does not
/// outlive a reboot, and the swap is atomic for every crash of the
/// process).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // The directory is made only when it is missing (the first write):
    // `create_dir_all` first costs a `mkdir` and a `statx` on every write.
    let mut f = match fs::File::create(&tmp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(IoError::at("create directory", dir))?;
            }
            fs::File::create(&tmp)
        }
        other => other,
    }
    .map_err(IoError::at("create", &tmp))?;
    f.write_all(bytes).map_err(IoError::at("write", &tmp))?;
    drop(f);
    replace(&tmp, path)
}

/// Appends to a `Vec<u8>`, copying short slices byte by byte.
/// serde_json writes its punctuation and indentation a few bytes at a
/// time (about 600 writes per container in `list --json`); `Vec`'s own
/// `write_all` calls the C library's `memcpy` for each. musl's starts a
/// `rep movs` even for 2 bytes: built with musl, 1.2 million such calls
/// were a quarter of `list --json` at 2,000 containers (glibc's `memcpy`
/// is cheaper for short copies, but still a call). Every pretty-printed
/// JSON ctdev writes goes through it ([`json_pretty`]).
pub(crate) struct ShortWrites<'a>(pub(crate) &'a mut Vec<u8>);

impl std::io::Write for ShortWrites<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if buf.len() <= 16 {
            self.0.reserve(buf.len());
            for &b in buf {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(buf);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `value` as pretty-printed JSON (the bytes of
/// `serde_json::to_vec_pretty`), written through [`ShortWrites`]: the
/// state files (the daemon's, its status, each container's ledger) are
/// written on every change.
pub(crate) fn json_pretty<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer_pretty(ShortWrites(&mut out), value)?;
    Ok(out)
}

/// Reads a small kernel file (procfs, cgroupfs: `stat` says size 0) whole
/// with a page-sized buffer: `open`, `read` until it returns 0, `close`.
/// `fs::read_to_string` first asks for the size (`statx`) and, the size
/// being 0, then reads 32 bytes, 64, 128, ...: six `read`s for a 300-byte
/// `/proc/PID/stat`. `ctdev add` reads a dozen such files.
pub(crate) fn read_small(path: impl AsRef<Path>) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Puts the file `tmp` at `path` atomically: a regular file already at
/// `path` is exchanged with it (`renameat2(RENAME_EXCHANGE)`) and then
/// removed from `tmp`; anything else (nothing, a filesystem without
/// exchange) gets a plain rename, which names the failure (a directory at
/// `path`).
///
/// Why not always a rename: on ext4 (`auto_da_alloc`, the default) a
/// rename *over* an existing file starts writeback of the new file's data
/// at once, and removing that file while its page is still being written
/// waits for the disk: `ctdev del` (whose empty ledger removes the file
/// that `add` had just replaced) spent 2.5–4 ms in that `unlink` on a
/// loaded machine, 30 µs without. An exchange is not a rename over a
/// file, so no writeback is forced; readers of `path` still see either the
/// old or the new file, never a partial one (a process killed between the
/// exchange and the removal leaves the old contents in `tmp`, which the
/// next write truncates).
fn replace(tmp: &Path, path: &Path) -> Result<(), IoError> {
    let regular = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    if regular {
        match exchange(tmp, path) {
            Ok(()) => return fs::remove_file(tmp).map_err(IoError::at("remove", tmp)),
            // Gone meanwhile, or no exchange on this filesystem: rename.
            Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS) => {}
            Err(e) => return Err(IoError::new("rename", path, e.into())),
        }
    }
    fs::rename(tmp, path).map_err(IoError::at("rename", path))
}

/// `renameat2(tmp, path, RENAME_EXCHANGE)` by its system call: nix wraps
/// it for glibc only, and the shipped binary is linked with musl (DESIGN,
/// "Process start: musl with dlmalloc").
fn exchange(tmp: &Path, path: &Path) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL);
    let (from, to) = (c(tmp)?, c(path)?);
    // SAFETY: renameat2 reads two NUL-terminated paths that live across
    // the call; AT_FDCWD and the flag are plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    Errno::result(r).map(drop)
}

/// The names of the files in `dir`, read once (a command that asks about
/// many containers reads their records' directory once instead of trying
/// a file per container). A missing directory has none; a directory that
/// cannot be read is logged (naming it) and has none.
pub fn file_names(dir: &Path) -> HashSet<String> {
    match fs::read_dir(dir) {
        Ok(all) => all
            .map_while(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot list: {e}");
            HashSet::new()
        }
    }
}

/// Whether the directory `dir` has an entry besides `.` and `..`, read
/// with a small buffer: the answer costs one or two `getdents64` calls of
/// a few entries however large the directory is (a full listing of a
/// directory of 10,000 pins is about 2 ms). `None` when it does not exist.
pub(crate) fn dir_has_entries(dir: &Path) -> Result<Option<bool>, IoError> {
    use std::os::fd::AsRawFd;
    let f = match fs::File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IoError::at("open directory", dir)(e)),
    };
    // `struct linux_dirent64`: d_ino u64, d_off i64, d_reclen u16, d_type
    // u8, then the NUL-terminated name; 8-byte aligned for the kernel.
    #[repr(C, align(8))]
    struct Buf([u8; 512]);
    let mut buf = Buf([0; 512]);
    loop {
        // SAFETY: `buf` is writable for its whole length and outlives the
        // call; `f` is an open directory fd.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                f.as_raw_fd(),
                buf.0.as_mut_ptr().cast::<libc::c_void>(),
                buf.0.len(),
            )
        };
        if n < 0 {
            return Err(IoError::at("read directory", dir)(
                io::Error::last_os_error(),
            ));
        }
        let filled = &buf.0[..(n as usize).min(buf.0.len())];
        if filled.is_empty() {
            return Ok(Some(false));
        }
        let mut rest = filled;
        while rest.len() > 19 {
            let reclen = usize::from(u16::from_ne_bytes([rest[16], rest[17]])).min(rest.len());
            if reclen <= 19 {
                break;
            }
            let name = rest[19..reclen]
                .split(|b| *b == 0)
                .next()
                .unwrap_or_default();
            if name != b"." && name != b".." {
                return Ok(Some(true));
            }
            rest = &rest[reclen..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pretty_writes_the_bytes_serde_json_writes() {
        let value = serde_json::json!({
            "version": 1,
            "containers": [
                {"id": 7, "path": "/sys/fs/cgroup/a b/\"q\"", "rules": ["c 1:3 rw", "b *:* m"]},
                {"id": 8, "empty": {}, "none": [], "long": "x".repeat(100), "esc": "tab\there\n"},
            ],
        });
        let expected = serde_json::to_vec_pretty(&value).unwrap();
        assert_eq!(json_pretty(&value).unwrap(), expected);
    }

    #[test]
    fn reads_small_and_large_files_whole() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        for len in [0, 1, 4095, 4096, 4097, 20000] {
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            std::fs::write(&path, &text).unwrap();
            assert_eq!(read_small(&path).unwrap(), text, "{len}");
        }
        let stat = read_small("/proc/self/stat").unwrap();
        assert!(stat.ends_with('\n'), "{stat}");
        assert_eq!(
            read_small(t.path().join("none")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn writes_atomically_and_names_the_failing_step() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("a/b/state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!t.path().join("a/b/state.json.tmp").exists());
        // Replaced by an exchange: the old file is not left behind.
        write_atomic(&path, b"three").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        assert!(!t.path().join("a/b/state.json.tmp").exists());
        assert_eq!(std::fs::read_dir(t.path().join("a/b")).unwrap().count(), 1);
        // A directory where the file should be: the rename is named.
        let dir = t.path().join("dir");
        std::fs::create_dir_all(dir.join("x")).unwrap();
        let e = write_atomic(&dir, b"x").unwrap_err();
        assert_eq!(e.op, "rename", "{e}");
    }

    #[test]
    fn tells_an_empty_directory_from_one_with_entries() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(dir_has_entries(&t.path().join("none")).unwrap(), None);
        assert_eq!(dir_has_entries(t.path()).unwrap(), Some(false));
        // Long names: more than one small read before the first real entry
        // is not needed, but several entries per read are.
        for i in 0..300 {
            std::fs::write(t.path().join(format!("{i:0>40}")), b"").unwrap();
        }
        assert_eq!(dir_has_entries(t.path()).unwrap(), Some(true));
        for i in 0..300 {
            std::fs::remove_file(t.path().join(format!("{i:0>40}"))).unwrap();
        }
        std::fs::create_dir(t.path().join("d")).unwrap();
        assert_eq!(dir_has_entries(t.path()).unwrap(), Some(true));
        std::fs::remove_dir(t.path().join("d")).unwrap();
        assert_eq!(dir_has_entries(t.path()).unwrap(), Some(false));
        let file = t.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(dir_has_entries(&file).is_err(), "a file is not a directory");
    }
}
