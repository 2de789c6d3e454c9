//! Kernel uevents: a `NETLINK_KOBJECT_UEVENT` socket bound to the kernel's
//! multicast group, and the parser of its messages
//! (`ACTION@DEVPATH\0KEY=VALUE\0...`).
//!
//! Only messages from the kernel (sender port 0) are accepted: udevd's
//! re-broadcasts (group 2, `libudev` header) and anything a local process
//! sends are ignored.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};

use netlink_sys::{protocols::NETLINK_KOBJECT_UEVENT, Socket, SocketAddr};

/// Why the uevent socket failed.
#[derive(Debug, thiserror::Error)]
pub enum UeventError {
    /// Creating, configuring or binding the socket failed.
    #[error("uevent socket: {op}: {source}")]
    Socket {
        /// The step.
        op: &'static str,
        /// The error.
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

/// The socket, non-blocking, subscribed to the kernel's uevent group.
pub struct UeventSocket {
    socket: Socket,
    buf: Vec<u8>,
}

impl UeventSocket {
    /// Opens and binds the socket (group 1: the kernel's events), with a
    /// large receive buffer so bursts are not dropped.
    pub fn open() -> Result<Self, UeventError> {
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
        socket
            .bind(&SocketAddr::new(0, 1))
            .map_err(err("bind to the kernel uevent group"))?;
        socket.set_non_blocking(true).map_err(err("O_NONBLOCK"))?;
        Ok(Self {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Reads every message waiting. `Err` with `ENOBUFS` means events were
    /// lost (the caller resynchronises); `WouldBlock` ends the batch.
    pub fn read_all(&mut self) -> Result<Vec<Uevent>, std::io::Error> {
        let mut out = Vec::new();
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let res = self.socket.recv_from(&mut &mut buf[..], 0);
            let r = match res {
                Ok((n, addr)) => {
                    // Only the kernel (port 0) sends real uevents.
                    if addr.port_number() == 0 {
                        if let Some(ev) = parse(&buf[..n.min(buf.len())]) {
                            out.push(ev);
                        }
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            };
            self.buf = buf;
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
