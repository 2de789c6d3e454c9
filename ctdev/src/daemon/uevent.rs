//! Device events: a `NETLINK_KOBJECT_UEVENT` socket bound to the kernel's
//! multicast group (1) or to udevd's (2), and the parsers of both formats.
//!
//! - **Kernel** messages are `ACTION@DEVPATH\0KEY=VALUE\0...`, accepted
//!   only from the kernel (sender port 0).
//! - **udev** messages are what udevd sends after its rules ran (the
//!   format libudev's monitor reads): a 40-byte header (`libudev\0`, the
//!   magic `0xfeedcafe` in network order, header size, properties offset
//!   and length, filter hashes) followed by `KEY=VALUE\0` properties with
//!   everything the rules set (ID_*, DEVLINKS, TAGS, ENV keys). Accepted
//!   only from a process (port != 0) whose credentials say uid 0.
//!
//! Reading this protocol directly (about 100 lines) instead of through
//! libudev keeps the daemon free of a C library that every build and CI
//! image would have to install (`udev`/`tokio-udev` link libudev).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use netlink_sys::{protocols::NETLINK_KOBJECT_UEVENT, Socket, SocketAddr};

/// Why the uevent socket failed.
#[derive(Debug, thiserror::Error)]
pub enum UeventError {
    /// Creating, configuring or binding the socket failed.
    #[error("uevent socket: {op}: {source}")]
    Socket {
        /// The step that failed (`socket`, `SO_RCVBUF`, `bind`, …).
        op: &'static str,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
}

/// A parsed kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `move`, `bind`, `unbind`, `online`, `offline`.
    pub action: String,
    /// Every KEY=VALUE (ACTION, DEVPATH, SUBSYSTEM, SEQNUM, DEVNAME, MAJOR, ...).
    pub props: BTreeMap<String, String>,
}

impl Uevent {
    /// SEQNUM, when present.
    pub fn seqnum(&self) -> Option<u64> {
        self.props.get("SEQNUM").and_then(|s| s.parse().ok())
    }
}

/// Parses one kernel uevent message. `None` for messages that are not
/// kernel uevents (udevd's `libudev` frames, garbage).
pub fn parse(buf: &[u8]) -> Option<Uevent> {
    let mut fields = buf.split(|b| *b == 0).filter(|f| !f.is_empty());
    let header = std::str::from_utf8(fields.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    if action.is_empty() || !devpath.starts_with('/') {
        return None;
    }
    let mut props = BTreeMap::new();
    for f in fields {
        let Ok(text) = std::str::from_utf8(f) else {
            continue;
        };
        if let Some((k, v)) = text.split_once('=') {
            props.insert(k.to_string(), v.to_string());
        }
    }
    props
        .entry("ACTION".into())
        .or_insert_with(|| action.to_string());
    props
        .entry("DEVPATH".into())
        .or_insert_with(|| devpath.to_string());
    Some(Uevent {
        action: props.get("ACTION").cloned().unwrap_or_default(),
        props,
    })
}

/// The `libudev\0` prefix of udevd's messages.
const UDEV_PREFIX: &[u8; 8] = b"libudev\0";
/// libudev's magic, in network byte order on the wire.
const UDEV_MAGIC: u32 = 0xfeed_cafe;
/// The smallest header that carries the properties' offset and length.
const UDEV_HEADER_MIN: usize = 24;

/// Parses one udevd message (a processed event). `None` for anything else
/// (kernel messages, garbage, offsets outside the buffer).
pub fn parse_udev(buf: &[u8]) -> Option<Uevent> {
    if buf.len() < UDEV_HEADER_MIN || &buf[..8] != UDEV_PREFIX {
        return None;
    }
    let word = |at: usize| -> Option<[u8; 4]> { buf.get(at..at + 4)?.try_into().ok() };
    if u32::from_be_bytes(word(8)?) != UDEV_MAGIC {
        return None;
    }
    // Sizes and offsets are in the sender's (this host's) byte order.
    let header_size = u32::from_ne_bytes(word(12)?) as usize;
    let off = u32::from_ne_bytes(word(16)?) as usize;
    let len = u32::from_ne_bytes(word(20)?) as usize;
    if header_size < UDEV_HEADER_MIN || off < header_size || off.checked_add(len)? > buf.len() {
        return None;
    }
    let mut props = BTreeMap::new();
    for f in buf[off..off + len]
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
    {
        let Ok(text) = std::str::from_utf8(f) else {
            continue;
        };
        if let Some((k, v)) = text.split_once('=') {
            props.insert(k.to_string(), v.to_string());
        }
    }
    let action = props.get("ACTION")?.clone();
    if action.is_empty() || !props.get("DEVPATH")?.starts_with('/') {
        return None;
    }
    Some(Uevent { action, props })
}

/// Where device events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The kernel's uevents (no udevd: nothing processed them).
    Kernel,
    /// udevd's processed events (its rules ran, the node has its owner and
    /// mode, the links exist).
    Udev,
}

impl Source {
    /// The netlink multicast group.
    fn group(self) -> u32 {
        match self {
            Source::Kernel => 1,
            Source::Udev => 2,
        }
    }

    /// `kernel` or `udev`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Kernel => "kernel",
            Source::Udev => "udev",
        }
    }
}

/// udevd's control socket.
pub const UDEV_CONTROL: &str = "/run/udev/control";

/// Whether udevd runs: a socket is bound at its control path (`control`).
/// Asked with a stream connect to udevd's seqpacket socket, which the
/// kernel refuses with `EPROTOTYPE` when (and only when) a live socket is
/// bound there: udevd never sees a connection. A stale file gives
/// `ECONNREFUSED`, none `ENOENT`.
pub fn udevd_running(control: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(control) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPROTOTYPE),
    }
}

/// Parses a sysfs `uevent` file (`KEY=VALUE` lines) for a device present
/// at start, adding `DEVPATH` and `SUBSYSTEM` which the file lacks.
pub fn parse_sysfs(text: &str, devpath: &str, subsystem: &str) -> BTreeMap<String, String> {
    let mut props: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    props.insert("DEVPATH".into(), devpath.to_string());
    props.insert("SUBSYSTEM".into(), subsystem.to_string());
    props.insert("ACTION".into(), "add".into());
    props
}

/// The socket, non-blocking, subscribed to the kernel's or udevd's group.
pub struct UeventSocket {
    socket: Socket,
    source: Source,
    buf: Vec<u8>,
}

impl UeventSocket {
    /// Opens the kernel's event socket.
    pub fn open() -> Result<Self, UeventError> {
        Self::open_for(Source::Kernel)
    }

    /// Opens and binds the socket to `source`'s group, with a large
    /// receive buffer so bursts are not dropped, and with sender
    /// credentials on every message.
    pub fn open_for(source: Source) -> Result<Self, UeventError> {
        let err = |op| move |source| UeventError::Socket { op, source };
        let mut socket = Socket::new(NETLINK_KOBJECT_UEVENT).map_err(err("socket"))?;
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN; fall back to the capped SO_RCVBUF.
        let size: libc::c_int = 16 << 20;
        // SAFETY: setsockopt on a socket fd we own, with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            socket
                .set_rx_buf_sz(size as usize)
                .map_err(err("SO_RCVBUF"))?;
        }
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket fd we own, with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("SO_PASSCRED")(std::io::Error::last_os_error()));
        }
        socket
            .bind(&SocketAddr::new(0, source.group()))
            .map_err(err(match source {
                Source::Kernel => "bind to the kernel uevent group",
                Source::Udev => "bind to the udev event group",
            }))?;
        socket.set_non_blocking(true).map_err(err("O_NONBLOCK"))?;
        Ok(Self {
            socket,
            source,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Which events it reads.
    pub fn source(&self) -> Source {
        self.source
    }

    /// One message into `self.buf`: its length, the sender's port and uid
    /// (from `SCM_CREDENTIALS`), and whether it was cut short.
    fn recv(&mut self) -> Result<(usize, u32, Option<u32>, bool), std::io::Error> {
        // SAFETY: all-zero is a valid sockaddr_nl / msghdr.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        // Room for one SCM_CREDENTIALS message, u64-aligned.
        let mut control = [0u64; 8];
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // `size_t` in glibc, `socklen_t` in musl; 64 bytes fit either.
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg on a socket fd we own; every pointer in `msg`
        // points to a live buffer of the length given, for the whole call.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut uid = None;
        // SAFETY: the CMSG_* macros walk the control buffer the kernel
        // filled, within msg_controllen; the credentials are read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred: libc::ucred =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>());
                    uid = Some(cred.uid);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
        Ok((n as usize, addr.nl_pid, uid, truncated))
    }

    /// Reads every message waiting. `Err` with `ENOBUFS` means events were
    /// lost (the caller resynchronises); `WouldBlock` ends the batch.
    pub fn read_all(&mut self) -> Result<Vec<Uevent>, std::io::Error> {
        let mut out = Vec::new();
        loop {
            let r = match self.recv() {
                Ok((n, port, uid, truncated)) => {
                    let msg = &self.buf[..n.min(self.buf.len())];
                    let ev = match self.source {
                        _ if truncated => None,
                        // Only the kernel (port 0) sends real uevents.
                        Source::Kernel if port == 0 => parse(msg),
                        // udevd: a process running as root, never the kernel.
                        Source::Udev if port != 0 && uid == Some(0) => parse_udev(msg),
                        _ => None,
                    };
                    out.extend(ev);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if out.is_empty() {
                        return Err(e);
                    }
                    // Hand over what was read; the error shows up next time.
                    return Ok(out);
                }
            }
        }
    }
}

impl AsRawFd for UeventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `losetup` on kernel 6.18 (a loop device appearing).
    const LOOP_ADD: &[u8] = b"add@/devices/virtual/block/loop12\0ACTION=add\0DEVPATH=/devices/virtual/block/loop12\0SUBSYSTEM=block\0MAJOR=7\0MINOR=12\0DEVNAME=loop12\0DEVTYPE=disk\0DISKSEQ=31\0SEQNUM=4711\0";
    /// A USB serial adapter's tty.
    const TTY_REMOVE: &[u8] = b"remove@/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/ttyUSB0/tty/ttyUSB0\0ACTION=remove\0DEVPATH=/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/ttyUSB0/tty/ttyUSB0\0SUBSYSTEM=tty\0MAJOR=188\0MINOR=0\0DEVNAME=ttyUSB0\0SEQNUM=5000\0";
    /// A network interface (no node).
    const NET_ADD: &[u8] = b"add@/devices/virtual/net/dummy7\0ACTION=add\0DEVPATH=/devices/virtual/net/dummy7\0SUBSYSTEM=net\0INTERFACE=dummy7\0IFINDEX=42\0SEQNUM=5001\0";

    #[test]
    fn parses_kernel_uevents() {
        let ev = parse(LOOP_ADD).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.props["DEVNAME"], "loop12");
        assert_eq!(ev.props["MAJOR"], "7");
        assert_eq!(ev.props["DEVPATH"], "/devices/virtual/block/loop12");
        assert_eq!(ev.seqnum(), Some(4711));
        let ev = parse(TTY_REMOVE).unwrap();
        assert_eq!(ev.action, "remove");
        assert_eq!(ev.props["SUBSYSTEM"], "tty");
        let ev = parse(NET_ADD).unwrap();
        assert_eq!(ev.props["INTERFACE"], "dummy7");
        assert!(!ev.props.contains_key("MAJOR"));
    }

    #[test]
    fn header_only_fields_are_filled() {
        let ev = parse(b"change@/devices/virtual/block/loop3\0SUBSYSTEM=block\0").unwrap();
        assert_eq!(ev.action, "change");
        assert_eq!(ev.props["DEVPATH"], "/devices/virtual/block/loop3");
    }

    #[test]
    fn rejects_non_uevents() {
        // udevd's frames start with "libudev\0".
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"add@relative\0"), None);
        assert_eq!(parse(b"\xff\xfe@/x\0"), None);
    }

    /// A udevd message as libudev's monitor sends it.
    fn udev_frame(props: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        for p in props {
            body.extend_from_slice(p.as_bytes());
            body.push(0);
        }
        let mut f = Vec::new();
        f.extend_from_slice(b"libudev\0");
        f.extend_from_slice(&0xfeedcafe_u32.to_be_bytes());
        f.extend_from_slice(&40u32.to_ne_bytes());
        f.extend_from_slice(&40u32.to_ne_bytes());
        f.extend_from_slice(&(body.len() as u32).to_ne_bytes());
        f.extend_from_slice(&[0u8; 16]);
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn parses_udev_messages() {
        let f = udev_frame(&[
            "ACTION=add",
            "DEVPATH=/devices/virtual/block/loop912000",
            "SUBSYSTEM=block",
            "DEVNAME=/dev/loop912000",
            "MAJOR=7",
            "MINOR=912000",
            "DEVLINKS=/dev/serial/by-id/usb-ctdev-test-x /dev/disk/by-diskseq/40",
            "ID_SERIAL=ctdev-x",
            "TAGS=:systemd:",
            "USEC_INITIALIZED=123",
        ]);
        let ev = parse_udev(&f).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.props["ID_SERIAL"], "ctdev-x");
        assert_eq!(ev.props["DEVNAME"], "/dev/loop912000");
        assert_eq!(parse(&f), None, "the kernel parser refuses udev frames");
        // A kernel message is not a udev one.
        assert_eq!(parse_udev(LOOP_ADD), None);
        // Bad magic, offsets outside the buffer, no ACTION.
        let mut bad = f.clone();
        bad[8] ^= 0xff;
        assert_eq!(parse_udev(&bad), None);
        let mut bad = f.clone();
        bad[20..24].copy_from_slice(&(f.len() as u32).to_ne_bytes());
        assert_eq!(parse_udev(&bad), None);
        let mut bad = f.clone();
        bad[16..20].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(parse_udev(&bad), None);
        assert_eq!(parse_udev(&udev_frame(&["DEVPATH=/devices/x"])), None);
        assert_eq!(parse_udev(&f[..30]), None);
    }

    #[test]
    fn udevd_is_not_running_at_a_missing_or_stale_socket() {
        let t = tempfile::tempdir().unwrap();
        assert!(!udevd_running(&t.path().join("control")));
        let stale = t.path().join("stale");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(!udevd_running(&stale));
        let live = t.path().join("live");
        let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert!(udevd_running(&live));
    }

    #[test]
    fn parses_sysfs_uevent_files() {
        let p = parse_sysfs(
            "MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\n",
            "/devices/virtual/block/loop3",
            "block",
        );
        assert_eq!(p["DEVNAME"], "loop3");
        assert_eq!(p["SUBSYSTEM"], "block");
        assert_eq!(p["DEVPATH"], "/devices/virtual/block/loop3");
    }
}
