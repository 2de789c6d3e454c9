//! NRI's one-socket multiplexing: the runtime and the plugin talk ttrpc in
//! both directions over one unix stream, as frames of
//! `[conn id: u32 BE][length: u32 BE][payload]`. Connection 1 carries the
//! plugin's service (ctdev is the ttrpc server), connection 2 the runtime's
//! (ctdev is the client). Each side becomes an in-memory duplex stream that
//! the ttrpc crate uses as an ordinary connection.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// The connection carrying the plugin's service.
pub(crate) const PLUGIN_CONN: u32 = 1;
/// The connection carrying the runtime's service.
pub(crate) const RUNTIME_CONN: u32 = 2;
/// Largest frame accepted (NRI's own limit is well below).
const MAX_FRAME: u32 = 16 << 20;
/// Buffer of each in-memory side.
const DUPLEX_BUF: usize = 1 << 20;

/// The two logical connections of one NRI socket.
pub(crate) struct Muxed {
    /// ctdev's end of connection 1 (serve the plugin service on it).
    pub plugin: DuplexStream,
    /// ctdev's end of connection 2 (a ttrpc client of the runtime).
    pub runtime: DuplexStream,
    /// Completes when the socket is closed or fails.
    pub closed: tokio::sync::oneshot::Receiver<std::io::Error>,
}

/// Splits `stream` into its two logical connections; spawns the pumps.
pub(crate) fn split(stream: UnixStream) -> Muxed {
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(Mutex::new(wr));
    let (plugin, plugin_far) = tokio::io::duplex(DUPLEX_BUF);
    let (runtime, runtime_far) = tokio::io::duplex(DUPLEX_BUF);
    let (plugin_rd, mut plugin_wr) = tokio::io::split(plugin_far);
    let (runtime_rd, mut runtime_wr) = tokio::io::split(runtime_far);
    let (tx, closed) = tokio::sync::oneshot::channel();

    tokio::spawn(pump_out(plugin_rd, PLUGIN_CONN, wr.clone()));
    tokio::spawn(pump_out(runtime_rd, RUNTIME_CONN, wr));
    tokio::spawn(async move {
        let err = loop {
            let mut hdr = [0u8; 8];
            if let Err(e) = rd.read_exact(&mut hdr).await {
                break e;
            }
            let id = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            if len > MAX_FRAME {
                break std::io::Error::other(format!("NRI frame of {len} bytes on conn {id}"));
            }
            let mut buf = vec![0u8; len as usize];
            if let Err(e) = rd.read_exact(&mut buf).await {
                break e;
            }
            let res = match id {
                PLUGIN_CONN => plugin_wr.write_all(&buf).await,
                RUNTIME_CONN => runtime_wr.write_all(&buf).await,
                other => {
                    tracing::debug!(conn = other, "dropping NRI frame for an unknown connection");
                    Ok(())
                }
            };
            if let Err(e) = res {
                break e;
            }
        };
        let _ = plugin_wr.shutdown().await;
        let _ = runtime_wr.shutdown().await;
        let _ = tx.send(err);
    });
    Muxed {
        plugin,
        runtime,
        closed,
    }
}

async fn pump_out(
    mut from: ReadHalf<DuplexStream>,
    id: u32,
    to: Arc<Mutex<OwnedWriteHalf>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(8 + n);
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&(n as u32).to_be_bytes());
        frame.extend_from_slice(&buf[..n]);
        to.lock().await.write_all(&frame).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn frames_both_ways() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut m = split(a);
        // Runtime → plugin service (conn 1), and → runtime client (conn 2).
        b.write_all(&[0, 0, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c'])
            .await
            .unwrap();
        b.write_all(&[0, 0, 0, 2, 0, 0, 0, 1, b'z']).await.unwrap();
        let mut got = [0u8; 3];
        m.plugin.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
        let mut one = [0u8; 1];
        m.runtime.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"z");
        // ctdev → runtime, framed with its conn id.
        m.runtime.write_all(b"hi").await.unwrap();
        let mut frame = [0u8; 10];
        b.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame, [0, 0, 0, 2, 0, 0, 0, 2, b'h', b'i']);
        drop(b);
        assert!(m.closed.await.is_ok());
    }
}
